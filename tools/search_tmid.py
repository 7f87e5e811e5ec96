#!/usr/bin/env python3
"""Search the intermediate time t_mid of the 2-step consistency sampler (an open question, locuslab/ect#11).

    torchrun --standalone --nproc_per_node=8 tools/search_tmid.py --net runs/ect-s/ema-0.050.safetensors \\
        --ref refs/img512.pkl --inception weights/inception-2015-12-05.pt --vae weights/sd-vae-ft-mse \\
        --grid 0.2:4.0:12 --num-samples 5000 --refine 1 --out tmid.json

FID on `--num-samples` samples for every t_mid of a log-spaced grid (`LO:HI:N`, or an explicit `--values` list), on the
same seeds for every value (common random numbers, so differences are not seed noise). The 1-step sample is
computed once per batch and shared by every t_mid. `--refine R` adds R rounds of a finer grid between the
neighbours of the best value. `--prefix 2.0` searches the last time of a 3-step sampler (t_mid = [2.0, t]).
Small-sample FID is biased upward, roughly uniformly across t_mid: confirm the winner with a 50k evaluation.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from ect_scale.config.base import ConfigError
from ect_scale.eval.cli import add_detector_args, add_runtime_args, detectors_from_args, float_list, run_main
from ect_scale.eval.pipeline import compute_metrics, generated_stats, load_for_eval
from ect_scale.eval.refs import load_reference
from ect_scale.eval.sampling import SamplerSpec
from ect_scale.runtime.dist import is_main, print0


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--net", required=True, metavar="PATH", help="network file (e.g. an EMA export)")
    ap.add_argument("--ref", default=None, metavar="PKL|NPZ", help="reference statistics")
    ap.add_argument("--vae", default=None, metavar="DIR", help="local SD-VAE directory (latent networks)")
    ap.add_argument("--grid", default="0.2:4.0:10", metavar="LO:HI:N", help="log-spaced grid of t_mid values")
    ap.add_argument("--values", type=float_list, default=None, help="explicit t_mid values (overrides --grid)")
    ap.add_argument("--prefix", type=float_list, default=[], help="fixed earlier intermediate times (n-step search)")
    ap.add_argument("--refine", type=int, default=0, help="rounds of a finer grid around the best value")
    ap.add_argument("--num-samples", dest="num", type=int, default=5000, help="samples per t_mid")
    ap.add_argument("--seed", type=int, default=0, help="first seed")
    ap.add_argument("--metric", default="fid", choices=["fid", "fd_dinov2"], help="what to minimise")
    ap.add_argument("--t-max", type=float, default=None, help="start time (default 80)")
    ap.add_argument("--out", default=None, metavar="JSON", help="write the table and the best value here")
    add_detector_args(ap, with_metrics=False)
    add_runtime_args(ap)
    args, unknown = ap.parse_known_args(argv)
    if unknown:
        ap.error(f"unrecognised arguments: {' '.join(unknown)}")
    return args


def log_grid(text: str) -> list[float]:
    """'LO:HI:N' -> N log-spaced values from HI down to LO."""
    try:
        lo, hi, n = text.split(":")
        lo, hi, n = float(lo), float(hi), int(n)
    except ValueError:
        raise ConfigError(f"--grid: cannot parse {text!r}. Fix: write LO:HI:N, e.g. 0.2:4.0:10") from None
    if not 0 < lo < hi or n < 2:
        raise ConfigError(f"--grid: need 0 < LO < HI and N >= 2 (got {text}). Fix: e.g. 0.2:4.0:10")
    return sorted(np.geomspace(lo, hi, n).tolist(), reverse=True)


def refine_around(values: list[float], best: float, n: int = 4) -> list[float]:
    """n new log-spaced values strictly between the neighbours of `best` in the sorted `values`."""
    vals = sorted(values)
    i = vals.index(best)
    lo = vals[i - 1] if i > 0 else best / 2
    hi = vals[i + 1] if i + 1 < len(vals) else best * 2
    new = np.geomspace(lo, hi, n + 2)[1:-1].tolist()
    return [v for v in new if all(abs(v - u) > 1e-9 * u for u in vals)]


def evaluate(values, args, net, encoder, detectors, reference, device) -> dict[float, float]:
    """t_mid -> metric for every value, plus the 1-step baseline under key 0.0, in one pass over the seeds."""
    upper = args.prefix[-1] if args.prefix else args.t_max
    for t in values:
        if not 0 < t < upper:
            raise ConfigError(
                f"--grid/--values: t_mid {t} must lie in (0, {upper}) (below --prefix's last time "
                "and --t-max). Fix: narrow the grid"
            )
    prefix = tuple(args.prefix)
    specs = [SamplerSpec(t_mid=prefix, t_max=args.t_max, label="baseline")]
    specs += [SamplerSpec(t_mid=prefix + (t,), t_max=args.t_max, label=f"t_mid={t:.6g}") for t in values]
    seeds = np.arange(args.seed, args.seed + args.num, dtype=np.int64)
    stats = generated_stats(
        net,
        encoder,
        detectors,
        seeds,
        specs,
        args.batch_gpu,
        device,
        progress=args.progress,
        desc=f"t_mid x{len(values)}",
    )
    scores = {t: compute_metrics(stats[s.name], reference)[args.metric] for t, s in zip(values, specs[1:])}
    scores[0.0] = compute_metrics(stats["baseline"], reference)[args.metric]
    return scores


def main_body(args, device) -> int:
    if not args.ref:
        raise ConfigError("--ref: reference statistics are required. Fix: see docs/evaluation.md")
    values = args.values or log_grid(args.grid)
    reference = load_reference(args.ref)
    detectors = detectors_from_args(args, [args.metric], device)
    reference.require(args.metric, detectors[args.metric].feature_dim)
    net, meta, encoder = load_for_eval(args.net, device, args.vae)
    t0 = time.perf_counter()
    scores = evaluate(values, args, net, encoder, detectors, reference, device)
    baseline = scores.pop(0.0)
    for _ in range(args.refine):
        best = min(scores, key=scores.get)
        new = refine_around(list(scores), best)
        if new:
            more = evaluate(new, args, net, encoder, detectors, reference, device)
            more.pop(0.0)
            scores.update(more)
    best = min(scores, key=scores.get)
    table = [{"t_mid": t, args.metric: scores[t]} for t in sorted(scores, reverse=True)]
    report = {
        "net": args.net,
        "prefix": list(args.prefix),
        "num": args.num,
        "metric": args.metric,
        "steps": len(args.prefix) + 2,
        f"baseline_{len(args.prefix) + 1}step": baseline,
        "table": table,
        "best": {"t_mid": best, args.metric: scores[best]},
        "ref_sha256": reference.sha256,
        "wall_s": round(time.perf_counter() - t0, 2),
    }
    for row in table:
        mark = "  <- best" if row["t_mid"] == best else ""
        print0(f"  t_mid {row['t_mid']:8.4f}  {args.metric} {row[args.metric]:9.4f}{mark}")
    print0(f"  {len(args.prefix) + 1}-step baseline {args.metric} {baseline:.4f}")
    if is_main():
        print(json.dumps(report, indent=2), flush=True)
        if args.out:
            with open(args.out, "w") as f:
                json.dump(report, f, indent=2)
    return 0


def main(argv=None) -> int:
    return run_main(main_body, parse_args(argv), program="search_tmid")


if __name__ == "__main__":
    sys.exit(main())
