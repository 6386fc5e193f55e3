"""`python -m vitmemad COMMAND [ARGS]`: the `vitmemad` command (vitmemad/main.py)."""
import sys

from vitmemad.main import main

if __name__ == "__main__":
    sys.exit(main())
