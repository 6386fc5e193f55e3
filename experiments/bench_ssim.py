"""The training loss's SSIM on a CPU: kornia on the layouts a step hands it (an NCHW input, the decoder's
channels-last reconstruction) against ``ssim_map``, which makes both channels-last first. Forward + backward of
1 - SSIM at ``experiment=cpu_real``'s batch, best of interleaved rounds; prints JSON.

    python experiments/bench_ssim.py [--threads 2] [--rounds 10] [--batch 8] [--size 128]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from kornia.metrics import ssim

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vitmemad.bench.measure import interleaved_best  # noqa: E402
from vitmemad.models.loss import DYNAMIC_RANGE, ssim_map  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.rand(args.batch, 3, args.size, args.size) * 2 - 1
    recon = (x + 0.3 * torch.randn_like(x)).clamp(-1, 1).contiguous(memory_format=torch.channels_last)
    recon.requires_grad_()

    def step(fn):
        return lambda: torch.autograd.grad((1 - fn(x, recon)).mean(), recon)

    best = interleaved_best({"kornia_as_given": step(lambda a, b: ssim(a, b, 11, max_val=DYNAMIC_RANGE)),
                             "ssim_map": step(ssim_map)}, args.rounds)
    result = {"threads": args.threads, "batch": args.batch, "size": args.size, "rounds": args.rounds,
              "seconds": best, "ssim_map_over_kornia": best["ssim_map"] / best["kornia_as_given"]}
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
