#!/usr/bin/env python3
"""Train with ECT on one or many GPUs (or CPUs).

    deepspeed [--num_nodes N --num_gpus G --hostfile H] launchers/train.py --config configs/ect-img512-s.yaml [--a.b=value ...]
    torchrun --nnodes N --nproc_per_node G ... launchers/train.py --config ... [--a.b=value ...]
    srun ... python launchers/train.py --config ...            (see launchers/slurm_train.sbatch)
    python launchers/train.py --config ... --dry-run            (print the resolved config and DeepSpeed JSON)

Overrides use dotted paths into the config (`--ect.q=4 --train.batch_gpu=16`). Re-running the same command resumes
from the latest complete checkpoint. The deepspeed launcher's `--local_rank` is accepted and ignored (LOCAL_RANK wins).
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from ect_scale.config import ConfigError, dump_config, load_config  # noqa: E402


def parse(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="YAML recipe (see configs/)")
    ap.add_argument("--dry-run", action="store_true", help="print the resolved config and DeepSpeed JSON, then exit")
    ap.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    args, rest = ap.parse_known_args(argv)
    if args.local_rank is not None and "LOCAL_RANK" not in os.environ:
        os.environ["LOCAL_RANK"] = str(args.local_rank)
    return args, rest


def main(argv=None) -> int:
    args, overrides = parse(sys.argv[1:] if argv is None else argv)
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        from ect_scale.engine import deepspeed_config

        world = int(os.environ.get("WORLD_SIZE", "1"))
        print(dump_config(cfg))
        print(json.dumps(deepspeed_config(cfg, world), indent=2))
        return 0
    from ect_scale.trainer import main as train

    train(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
