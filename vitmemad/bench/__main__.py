"""``python -m vitmemad.bench [options]`` (``--help`` lists them)."""
from __future__ import annotations

if __name__ == "__main__":
    import sys

    from vitmemad.bench import main

    sys.exit(main())
