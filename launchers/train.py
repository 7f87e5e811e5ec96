#!/usr/bin/env python3
"""Train with ECT on one or many GPUs (or CPUs).

    deepspeed [--num_nodes N --num_gpus G --hostfile H] launchers/train.py --config configs/ect-img512-s.yaml
    [--a.b=value ...]
    torchrun --nnodes N --nproc_per_node G ... launchers/train.py --config ... [--a.b=value ...]
    srun ... python launchers/train.py --config ...            (see launchers/slurm_train.sbatch)
    python launchers/train.py --config ... --dry-run            (print the resolved config and DeepSpeed JSON, check
                                                                 the init file, data, run and checkpoint folders)

Overrides use dotted paths into the config (`--ect.q=4 --train.batch_gpu=16`). Re-running the same command resumes
from the latest complete checkpoint. The deepspeed launcher's `--local_rank` is accepted and ignored (LOCAL_RANK wins).
A single process picks a free rendezvous port; concurrent multi-process runs on one machine each need their own
(`deepspeed --master_port <port>`, `torchrun --master-port <port>`).

Expected failures (storage, missing files, incompatible checkpoints, out of memory) print one line
`error: <what>. Fix: <how>` and exit with code 2; the full traceback is in <run_dir>/logs/error-rank<R>.log.
Exit codes: 0 finished, or stopped with a checkpoint (SIGTERM/SIGUSR1, train.slice_nimg); 1 a bug; 2 an expected
failure; 3 a hang (train.hang_timeout_s). <run_dir>/DONE exists only after a finished run: check it after
`deepspeed`, which exits 0 when its launch process is killed (launchers/require_done.sh). A second run in a folder
in use is refused (docs/troubleshooting.md).
"""

import argparse
import json
import os
import sys

from ect_scale.config import Config, dump_config, load_config
from ect_scale.runtime import entry


def parse(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="YAML recipe (see configs/)")
    ap.add_argument(
        "--dry-run",
        action="store_true",
        help="print the resolved config and DeepSpeed JSON, check what "
        "the run needs (init file, data, writable folders), then exit",
    )
    ap.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    args, rest = ap.parse_known_args(argv)
    if args.local_rank is not None and "LOCAL_RANK" not in os.environ:
        os.environ["LOCAL_RANK"] = str(args.local_rank)
    return args, rest


def main(argv=None) -> int:
    args, overrides = parse(sys.argv[1:] if argv is None else argv)
    return entry.run(lambda: run(args, overrides), program="train")


def run(args, overrides: list[str]) -> int:
    cfg = load_config(args.config, overrides)
    entry.set_log_dir(os.path.join(cfg.run_dir, "logs"))
    if args.dry_run:
        return dry_run(cfg)
    from ect_scale.train.trainer import main as train

    train(cfg)
    return 0


def dry_run(cfg: Config) -> int:
    """Print the resolved config and DeepSpeed JSON, then every problem the run would meet (exit code 2 if any)."""
    from ect_scale.engine.zero import deepspeed_config
    from ect_scale.train.preflight import check_run

    world = int(os.environ.get("WORLD_SIZE", "1"))
    print(dump_config(cfg))
    print(json.dumps(deepspeed_config(cfg.engine, cfg.optim, cfg.train, world), indent=2), flush=True)
    problems = check_run(cfg, world)
    if problems:
        print(
            f"error: --dry-run found {len(problems)} problem{'s' if len(problems) > 1 else ''} this run would "
            "meet:\n" + "\n".join(f"  {i}. {p}" for i, p in enumerate(problems, 1)),
            file=sys.stderr,
            flush=True,
        )
        return 2
    checked = [
        "init" if cfg.init else None,
        "teacher" if cfg.teacher else None,
        "guide" if cfg.guide else None,
        "data" if cfg.data.kind == "shards" else None,
        "run_dir",
        "checkpoint.dir" if cfg.checkpoint.enabled else None,
    ]
    print(f"dry run: ok ({', '.join(c for c in checked if c)} checked; {world} rank(s))", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
