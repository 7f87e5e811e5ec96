"""Command-line pieces shared by launchers/evaluate.py, tools/fid_ref.py and tools/search_tmid.py.

Options left unset fall back to a run's resolved config (`--config runs/x/config.yaml`: eval.* and ect.t_mid /
ect.t_max), then to the defaults. Works under `deepspeed` (which appends --local_rank) and `torchrun`.
"""

from __future__ import annotations

import argparse
import os
from typing import Callable, Optional

from ect_scale.config.base import ConfigError
from ect_scale.eval.detectors import METRICS, Detector, build_detectors
from ect_scale.eval.sampling import SamplerSpec, consistency_spec
from ect_scale.runtime import entry
from ect_scale.runtime.dist import init_from_env, is_main


def float_list(text: str) -> list[float]:
    return [float(t) for t in str(text).split(",") if t.strip()]


def int_list(text: str) -> list[int]:
    return [int(t) for t in str(text).split(",") if t.strip()]


def add_detector_args(ap: argparse.ArgumentParser, with_metrics: bool = True) -> None:
    g = ap.add_argument_group("detectors (local files; see docs/evaluation.md)")
    if with_metrics:
        g.add_argument(
            "--metrics",
            default=None,
            help="comma list of fid,fd_dinov2,fd_classifier (default: fid, plus "
            "fd_dinov2 when --dinov2-repo and --dinov2-weights are given; fd_classifier alone with "
            "--classifier)",
        )
    g.add_argument("--inception", default=None, metavar="PT", help="NVIDIA TorchScript inception-2015-12-05.pt")
    g.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow the StyleGAN3/EDM2 inception .pkl (it runs code stored in the file)",
    )
    g.add_argument("--dinov2-repo", default=None, metavar="DIR", help="local clone of facebookresearch/dinov2")
    g.add_argument("--dinov2-weights", default=None, metavar="PTH", help="dinov2_vitl14_pretrain.pth")
    g.add_argument(
        "--classifier",
        default=None,
        metavar="FILE",
        help="offline development metric fd_classifier (small datasets, not FID): a classifier trained "
        "on the training shards by tools/train_classifier.py",
    )


def add_runtime_args(ap: argparse.ArgumentParser, batch_default: int = 64) -> None:
    g = ap.add_argument_group("runtime")
    g.add_argument(
        "--config",
        default=None,
        metavar="YAML",
        help="take unset options from a run's resolved config (eval.*, ect.t_mid, ect.t_max)",
    )
    g.add_argument("--batch-gpu", type=int, default=None, help=f"images per GPU per batch (default {batch_default})")
    g.add_argument("--device", default="auto", help="auto = cuda:LOCAL_RANK if available, else cpu")
    g.add_argument(
        "--progress",
        default="auto",
        choices=["auto", "rich", "plain", "none"],
        help="rank-0 progress: rich bar on a terminal, plain lines otherwise",
    )
    g.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)  # deepspeed


def add_sampler_args(ap: argparse.ArgumentParser) -> None:
    g = ap.add_argument_group("sampler")
    g.add_argument(
        "--sampler",
        default="consistency",
        choices=["consistency", "heun", "euler"],
        help="consistency (ECT, 1/2/n steps), or EDM's heun / euler (diffusion teachers)",
    )
    g.add_argument("--steps", type=int_list, default=None, help="consistency step counts, e.g. 1,2 (default 1,2)")
    g.add_argument("--t-mid", type=float_list, default=None, help="intermediate times, largest first (2 steps: one)")
    g.add_argument("--t-max", type=float, default=None, help="start time / sigma_max (default 80)")
    g.add_argument(
        "--heun-steps", type=int, default=32, help="EDM sampler steps (Heun NFE = 2N - 1, EDM2: 32; Euler NFE = N)"
    )


def apply_config_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Fill unset options from `--config` (a run's resolved YAML), then from defaults."""
    eval_cfg = ect_cfg = None
    if args.config:
        from ect_scale.config import load_config

        cfg = load_config(args.config)
        eval_cfg, ect_cfg = cfg.eval, cfg.ect
    pairs = {
        "inception": "inception_path",
        "dinov2_repo": "dinov2_repo",
        "dinov2_weights": "dinov2_path",
        "ref": "ref_stats",
        "vae": "vae_path",
        "batch_gpu": "batch_gpu",
        "classifier": "classifier_path",
    }
    for arg, field in pairs.items():
        if hasattr(args, arg) and getattr(args, arg) is None and eval_cfg is not None:
            setattr(args, arg, getattr(eval_cfg, field))
    if hasattr(args, "t_mid") and args.t_mid is None and ect_cfg is not None:
        args.t_mid = list(ect_cfg.t_mid)
    if hasattr(args, "t_max") and args.t_max is None:
        args.t_max = ect_cfg.t_max if ect_cfg is not None else 80.0
    if getattr(args, "batch_gpu", None) is None:
        args.batch_gpu = 64
    return args


def resolve_metrics(args: argparse.Namespace) -> list[str]:
    if args.metrics:
        metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
        bad = [m for m in metrics if m not in METRICS]
        if bad or not metrics:
            raise ConfigError(f"--metrics: unknown metric(s) {bad}. Fix: use a comma list of {', '.join(METRICS)}")
        return metrics
    if getattr(args, "classifier", None) and not args.inception:
        return ["fd_classifier"]
    return ["fid", "fd_dinov2"] if args.dinov2_repo and args.dinov2_weights else ["fid"]


def detectors_from_args(args: argparse.Namespace, metrics: list[str], device) -> dict[str, Detector]:
    return build_detectors(
        metrics,
        device,
        inception_path=args.inception,
        dinov2_repo=args.dinov2_repo,
        dinov2_path=args.dinov2_weights,
        trust_pickle=args.trust_pickle,
        classifier_path=getattr(args, "classifier", None),
    )


def specs_from_args(args: argparse.Namespace) -> list[SamplerSpec]:
    if args.sampler in ("heun", "euler"):
        if args.heun_steps < 2:
            raise ConfigError(f"--heun-steps: must be >= 2 (got {args.heun_steps}). Fix: use 32 (EDM2, NFE 63)")
        return [
            SamplerSpec(
                kind="heun", num_steps=args.heun_steps, t_max=args.t_max, order=2 if args.sampler == "heun" else 1
            )
        ]
    steps = args.steps or [1, 2]
    if max(steps) > 1 and not args.t_mid:
        raise ConfigError(
            f"--t-mid: a {max(steps)}-step sampler needs intermediate times. Fix: pass --t-mid (ECT "
            "ImageNet-64: 1.526; configs/ect-img512-*.yaml: 0.982) or --config RUN/config.yaml"
        )
    return [consistency_spec(n, args.t_mid or [], args.t_max, option="--t-mid") for n in sorted(set(steps))]


def run_main(body: Callable[[argparse.Namespace, object], int], args: argparse.Namespace, program: str) -> int:
    """Join the process group from the environment and run `body(args, device)` as an entry point
    (`ect_scale.runtime.entry`: one line and exit code 2 for user errors; error logs next to `--config`'s run)."""

    def work() -> int:
        if args.config:
            entry.set_log_dir(os.path.join(os.path.dirname(os.path.abspath(args.config)), "logs"))
        device = init_from_env(args.device)
        return body(apply_config_defaults(args), device)

    return entry.run(work, program=program)


def optional_writer(logdir: Optional[str]):
    """A TensorBoard SummaryWriter on rank 0 when `logdir` is given, else None."""
    if not logdir or not is_main():
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(logdir)
