#!/usr/bin/env python3
"""ECT end to end on a 2-D Gaussian mixture (CPU, ~1 minute): pretrain a teacher with EDM2's diffusion loss,
ECT-tune it, and print sliced Wasserstein distances (lower is better) as JSON.

    python tools/toy_2d.py [--teacher-steps 3000] [--ect-steps 2000] [--seed 0]
"""

import argparse
import dataclasses
import json
import sys

import torch

from ect_scale.runtime import entry
from ect_scale.toy.gmm2d import run_toy


def _main(argv) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher-steps", type=int, default=3000)
    ap.add_argument("--ect-steps", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hidden", type=int, default=128, help="width of the MLP denoiser")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    res = run_toy(
        teacher_steps=args.teacher_steps, ect_steps=args.ect_steps, batch=args.batch, seed=args.seed, hidden=args.hidden
    )
    print(json.dumps(dataclasses.asdict(res), indent=2))
    return 0


def main(argv=None) -> int:
    return entry.run(lambda: _main(argv), program="toy_2d")


if __name__ == "__main__":
    sys.exit(main())
