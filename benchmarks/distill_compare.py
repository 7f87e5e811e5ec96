#!/usr/bin/env python3
"""Score and compare the runs of benchmarks/distill_compare.sh: ECT, CD and ECD on the quickstart's digits.

    python benchmarks/distill_compare.py --root runs/distill_compare --base runs/distill_compare/base

Every EMA export (`power-0.050`, the EMA the quickstart reports) of every run under --root is sampled at 1 and 2
steps (the run's t_mid; the same 500 seeds for all) and scored with FD_classifier against half A of the digits, as
tools/quickstart_report.py does. Each export's training compute is the `compute.train_flops` its file records
(Compute/train_flops of the run: teacher, guide and CD target evaluations included). Writes to --root:
  scores.json        one row per (run, export): method, seed, budget, images, train FLOPs, FD and accuracy
  comparison.md      the table and "CD needs k x ECT's compute to reach ECT's 2-step quality", same for ECD, with
                     bootstrap intervals over training seeds
  comparison.png     FD (2 and 1 steps) against training FLOPs for all three
  grids/             2-step sample grids of seed 0 at ECT's budget and at each method's largest
Scores are cached in scores.json: re-running scores only new exports.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import re
import sys
import time

import numpy as np

RUN_RE = re.compile(r"^(ect|cd|ecd)(?:-x([0-9.]+))?-s(\d+)$")
EMA = "power-0.050"
ECT_NIMG = 30720


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default="runs/distill_compare", help="the runs of benchmarks/distill_compare.sh")
    ap.add_argument("--base", default=None, help="data/, classifier.safetensors, teacher/ (default: <root>/base)")
    ap.add_argument("--num", type=int, default=500, help="samples per score (and real images of the floor)")
    ap.add_argument("--boot", type=int, default=4000, help="bootstrap resamples over training seeds")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--score-only", action="store_true", help="score new exports and stop (no report)")
    ap.add_argument(
        "--reached",
        choices=["cd", "ecd"],
        default=None,
        help="exit 0 if the seed mean of this method's 2-step FD reaches ECT's at some budget scored so far, else 1",
    )
    return ap.parse_args(argv)


# ----------------------------------------------------------------------------- the k factor


def crossing(compute: np.ndarray, metric: np.ndarray, target: float) -> float:
    """The compute at which a (compute-sorted) metric curve first reaches `target` or below, interpolated linearly
    in log compute between the grid points around it. Returns -inf if the first point is already there (the
    crossing is at or below the smallest budget tried) and +inf if no point is (beyond the largest)."""
    below = np.nonzero(metric <= target)[0]
    if below.size == 0:
        return math.inf
    j = int(below[0])
    if j == 0:
        return -math.inf
    m0, m1 = metric[j - 1], metric[j]
    c0, c1 = math.log(compute[j - 1]), math.log(compute[j])
    frac = (m0 - target) / (m0 - m1)
    return math.exp(c0 + frac * (c1 - c0))


def k_factor(ref_scores: np.ndarray, ref_compute: float, compute: np.ndarray, scores: np.ndarray) -> float:
    """k = C* / C_ECT: the compute at which the seed-mean curve `scores` [seeds, budgets] reaches the seed mean of
    `ref_scores`, over the reference's compute (+-inf: beyond / below the budgets tried)."""
    c = crossing(compute, scores.mean(0), float(ref_scores.mean()))
    return c / ref_compute if math.isfinite(c) else c


def bootstrap_k(ref_scores, ref_compute, compute, scores, n: int = 4000, seed: int = 0) -> np.ndarray:
    """k over `n` resamples (with replacement) of the training seeds of both methods."""
    rng = np.random.default_rng(seed)
    out = np.empty(n)
    for i in range(n):
        ref = ref_scores[rng.integers(0, len(ref_scores), len(ref_scores))]
        pick = scores[rng.integers(0, scores.shape[0], scores.shape[0])]
        out[i] = k_factor(ref, ref_compute, compute, pick)
    return out


def describe_k(k: float, boot: np.ndarray, kmin: float, kmax: float) -> str:
    """One sentence: the point estimate, the 5-95 % bootstrap interval, and how often the crossing left the grid."""
    if k == math.inf:
        point = f"never within the budgets tried (> {kmax:.2f}x)"
    elif k == -math.inf:
        point = f"at or below the smallest budget tried (<= {kmin:.2f}x)"
    else:
        point = f"{k:.2f}x"
    lo, hi = np.percentile(np.clip(boot, kmin / 2, kmax * 2), [5, 95])
    above, below = float(np.mean(boot == math.inf)), float(np.mean(boot == -math.inf))
    interval = f"5-95 % bootstrap interval over seeds [{_fmt(lo, kmin, kmax)}, {_fmt(hi, kmin, kmax)}]"
    off = f"; {above:.0%} of resamples never cross, {below:.0%} cross at or below the smallest budget"
    return f"{point} ({interval}{off if above or below else ''})"


def _fmt(v: float, kmin: float, kmax: float) -> str:
    if v > kmax:
        return f"> {kmax:.2f}x"
    if v < kmin:
        return f"<= {kmin:.2f}x"
    return f"{v:.2f}x"


# ----------------------------------------------------------------------------- scoring


def exports(root: str) -> list[dict]:
    """Every (run, EMA export) under root: method, seed, budget (x ECT's images), path."""
    out = []
    for run in sorted(os.listdir(root)):
        m = RUN_RE.match(run)
        if not m:
            continue
        method, budget, seed = m.group(1), m.group(2), int(m.group(3))
        for path in sorted(glob.glob(os.path.join(root, run, "ema", f"ema-*-{EMA}.safetensors"))):
            out.append({"run": run, "method": method, "seed": seed, "run_budget": budget, "path": path})
    return out


def score_all(items: list[dict], base: str, num: int, cache: dict) -> list[dict]:
    import torch

    from ect_scale.config import load_config
    from ect_scale.eval.classifier import ClassifierDetector
    from ect_scale.eval.images import decoded_shards
    from ect_scale.eval.offline import Row, image_stats, real_row, score_rows, split_halves
    from ect_scale.eval.pipeline import load_for_eval
    from ect_scale.eval.sampling import SamplerSpec
    from ect_scale.networks.netfile import read_network_header

    device = torch.device("cpu")
    detector = ClassifierDetector(os.path.join(base, "classifier.safetensors"), device)
    images, labels, _ = decoded_shards(os.path.join(base, "data", "manifest.json"))
    half_a, half_b = split_halves(len(images))
    ref = image_stats(detector, images[half_a])
    rows = []
    if "floor" not in cache:
        teacher_path = sorted(glob.glob(os.path.join(base, "teacher", "ema", "*.safetensors")))[-1]
        teacher, _, encoder = load_for_eval(teacher_path, device)
        floor = real_row(detector, images[half_b[:num]], labels[half_b[:num]], ref)
        heun = [Row("teacher heun32", teacher, SamplerSpec(kind="heun", num_steps=32))]
        score_rows(heun, encoder, detector, ref, num, device)
        cache["floor"] = {"fd": floor.fd, "accuracy": floor.accuracy}
        cache["teacher_heun32"] = {"fd": heun[0].fd, "accuracy": heun[0].accuracy, "nfe": 63}
    for item in items:
        key = os.path.relpath(item["path"])
        if key not in cache.get("exports", {}):
            t0 = time.time()
            run_dir = os.path.dirname(os.path.dirname(item["path"]))
            t_mid = load_config(os.path.join(run_dir, "config.yaml")).ect.t_mid[0]
            net, meta, encoder = load_for_eval(item["path"], device)
            pair = [
                Row("1 step", net, SamplerSpec(kind="consistency")),
                Row("2 steps", net, SamplerSpec(kind="consistency", t_mid=(t_mid,))),
            ]
            score_rows(pair, encoder, detector, ref, num, device)
            _, meta = read_network_header(item["path"])
            cache.setdefault("exports", {})[key] = {
                "nimg": int(meta["nimg"]),
                "train_flops": float(meta["compute"]["train_flops"]),
                "fd1": pair[0].fd,
                "fd2": pair[1].fd,
                "acc1": pair[0].accuracy,
                "acc2": pair[1].accuracy,
                "t_mid": t_mid,
            }
            print(f"scored {key}: FD 1 step {pair[0].fd:.2f}, 2 steps {pair[1].fd:.2f} ({time.time() - t0:.0f} s)")
        rows.append({**item, **cache["exports"][key], "budget": cache["exports"][key]["nimg"] / ECT_NIMG})
    return rows


# ----------------------------------------------------------------------------- report


def grid(rows: list[dict], method: str, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(budgets, compute, scores [seeds, budgets]) of one method, over the budgets every seed has."""
    mine = [r for r in rows if r["method"] == method]
    seeds = sorted({r["seed"] for r in mine})
    budgets = sorted(set.intersection(*[{r["budget"] for r in mine if r["seed"] == s} for s in seeds]))
    by = {(r["seed"], r["budget"]): r for r in mine}
    compute = np.array([np.mean([by[s, b]["train_flops"] for s in seeds]) for b in budgets])
    scores = np.array([[by[s, b][key] for b in budgets] for s in seeds])
    return np.array(budgets), compute, scores


def report(rows: list[dict], cache: dict, boot: int) -> tuple[str, dict]:
    _, ect_c, ect_s = grid(rows, "ect", "fd2")
    _, _, ect_s1 = grid(rows, "ect", "fd1")
    ect_scores, ect_compute = ect_s[:, -1], float(ect_c[-1])
    lines = [
        "| method | budget (x ECT images) | images | train FLOPs | x ECT FLOPs | seeds | FD 2 steps | FD 1 step |",
        "|---|---|---|---|---|---|---|---|",
        f"| ECT | 1 | {ECT_NIMG:,} | {ect_compute:.3g} | 1.00 | {len(ect_scores)} | {_ms(ect_scores)} | "
        f"{_ms(ect_s1[:, -1])} |",
    ]
    verdicts = {}
    for method in ("cd", "ecd"):
        if not any(r["method"] == method for r in rows):
            continue
        budgets, compute, scores = grid(rows, method, "fd2")
        _, _, scores1 = grid(rows, method, "fd1")
        for j, b in enumerate(budgets):
            lines.append(
                f"| {method.upper()} | {b:g} | {int(round(b * ECT_NIMG)):,} | {compute[j]:.3g} | "
                f"{compute[j] / ect_compute:.2f} | {scores.shape[0]} | {_ms(scores[:, j])} | {_ms(scores1[:, j])} |"
            )
        k = k_factor(ect_scores, ect_compute, compute, scores)
        samples = bootstrap_k(ect_scores, ect_compute, compute, scores, boot)
        kmin, kmax = compute[0] / ect_compute, compute[-1] / ect_compute
        verdicts[method] = {"k": k, "text": describe_k(k, samples, kmin, kmax), "kmin": kmin, "kmax": kmax}
    floor, heun = cache["floor"], cache["teacher_heun32"]
    text = "\n".join(lines) + "\n\n"
    text += f"Teacher, Heun 32 steps (63 NFE): FD {heun['fd']:.2f}; real digits (the floor): FD {floor['fd']:.2f}.\n\n"
    for method, v in verdicts.items():
        text += f"- {method.upper()} needs {v['text']} of ECT's training compute to reach ECT's 2-step FD here.\n"
    return text, verdicts


def reached(rows: list[dict], method: str) -> bool:
    """Whether the seed mean of `method`'s 2-step FD is at or below ECT's at some budget scored so far."""
    if not any(r["method"] == method for r in rows):
        return False
    _, _, ect = grid(rows, "ect", "fd2")
    _, _, scores = grid(rows, method, "fd2")
    return bool((scores.mean(0) <= ect[:, -1].mean()).any())


def _ms(v: np.ndarray) -> str:
    return f"{v.mean():.2f} ± {v.std(ddof=1):.2f}" if len(v) > 1 else f"{v.mean():.2f}"


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = {"ect": "black", "cd": "tab:red", "ecd": "tab:blue"}
    for ax, key, title in zip(axes, ("fd2", "fd1"), ("2 steps", "1 step")):
        for method in ("ect", "cd", "ecd"):
            if not any(r["method"] == method for r in rows):
                continue
            _, compute, scores = grid(rows, method, key)
            for s in scores:
                ax.plot(compute, s, "o" if method == "ect" else ".-", color=colors[method], alpha=0.3, lw=0.8)
            ax.plot(compute, scores.mean(0), "o-", color=colors[method], lw=2, label=method.upper() + " (mean)")
            if method == "ect":
                ax.axhline(scores.mean(), color="black", ls="--", lw=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("training compute, Compute/train_flops (teacher and target evaluations included)")
        ax.set_ylabel("FD_classifier (lower is better)")
        ax.set_title(f"digits, {title}")
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write_grids(rows: list[dict], out_dir: str) -> list[str]:
    """2-step sample grids (10 classes x 10 seeds, the same for every model) of seed 0's export of each method at
    ECT's budget and at the method's largest budget."""
    import torch

    from ect_scale.ect import generate
    from ect_scale.eval.grids import auto_zoom, make_grid, save_png
    from ect_scale.eval.pipeline import load_for_eval

    picks = {}
    for method in ("ect", "cd", "ecd"):
        mine = sorted((r for r in rows if r["method"] == method and r["seed"] == 0), key=lambda r: r["budget"])
        for r in [r for r in mine if abs(r["budget"] - 1) < 1e-9] + mine[-1:]:
            picks[f"{method}-x{r['budget']:g}"] = r
    labels = torch.nn.functional.one_hot(torch.arange(10).repeat_interleave(10), 10).float()
    paths = []
    for name, r in picks.items():
        net, _, encoder = load_for_eval(r["path"], torch.device("cpu"))
        images = encoder.decode(generate(net, list(range(100)), "cpu", labels=labels, t_mid=(r["t_mid"],)))
        path = os.path.join(out_dir, f"grid-{name}-2step.png")
        save_png(make_grid(images.cpu(), cols=10, pad=2, zoom=auto_zoom(images.shape[-1])), path)
        paths.append(path)
    return paths


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    base = args.base or os.path.join(args.root, "base")
    cache_path = os.path.join(args.root, "scores.json")
    cache = json.load(open(cache_path)) if os.path.exists(cache_path) else {}
    items = exports(args.root)
    if not any(i["method"] == "ect" for i in items):
        print(f"error: no ECT run under {args.root}. Fix: run benchmarks/distill_compare.sh first", file=sys.stderr)
        return 2
    rows = score_all(items, base, args.num, cache)
    with open(cache_path, "w") as f:
        json.dump(cache, f, indent=1)
    if args.score_only:
        return 0
    if args.reached:
        return 0 if reached(rows, args.reached) else 1
    text, verdicts = report(rows, cache, args.boot)
    with open(os.path.join(args.root, "comparison.md"), "w") as f:
        f.write(text)
    with open(os.path.join(args.root, "comparison.json"), "w") as f:
        json.dump({"rows": rows, "verdicts": verdicts}, f, indent=1, default=float)
    plot(rows, os.path.join(args.root, "comparison.png"))
    write_grids(rows, os.path.join(args.root, "grids"))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
