#!/usr/bin/env python3
"""Score and compare the runs of benchmarks/distill_compare.sh: ECT, CD and ECD on the quickstart's digits.

    python benchmarks/distill_compare.py --root runs/distill_compare --base runs/distill_compare/base

Every EMA export (`power-0.050`, the EMA the quickstart reports) of every run under --root is sampled at 1 and 2
steps (the same 500 seeds for all) and scored with FD_classifier against half A of the digits, as
tools/quickstart_report.py does. 2 steps are scored twice: at the recipe's t_mid (ECT's 6.0, shared by all three)
and at each method's own t_mid, the best of a sweep (--choose-t-mid) on its seed-0 run at ECT's budget, as ECT's
6.0 was chosen. Each export's training compute is the `compute.train_flops` its file records (Compute/train_flops
of the run: teacher, guide and CD target evaluations included). Writes to --root:
  scores.json        the score cache: per (export, t_mid) images, train FLOPs, FD and accuracy; the t_mid sweeps
  comparison.md      the tables and "CD needs k x ECT's compute to reach ECT's 2-step quality", same for ECD, with
                     bootstrap intervals over training seeds, for both t_mid choices
  comparison.json    the rows and the k factors
  comparison.png     FD (2 steps at own and shared t_mid, 1 step) against training FLOPs for all three
  grids/             2-step sample grids (own t_mid) of seed 0 at ECT's budget and at each method's largest
Re-running scores only what is new.
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
        "--choose-t-mid",
        default=None,
        metavar="T1,T2,...",
        help="pick each method's own 2-step t_mid from these values (seed 0, ECT's budget; once per method)",
    )
    ap.add_argument(
        "--reached",
        choices=["cd", "ecd"],
        default=None,
        help="exit 0 if the seed mean of this method's 2-step FD reaches ECT's at some budget scored so far, else 1",
    )
    ap.add_argument("--by", type=float, default=math.inf, help="with --reached: only budgets up to this (x ECT images)")
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
            kimg = os.path.basename(path).split("-")[1]
            out.append(
                {"run": run, "method": method, "seed": seed, "run_budget": budget, "path": path, "nimg_file": kimg}
            )
    return out


class Scorer:
    """FD_classifier of network files against half A of the digits (quickstart_report's protocol), cached in
    `cache["exports"]` by (file, t_mid); sampling seeds 0..num-1 for every model."""

    def __init__(self, base: str, num: int, cache: dict):
        import torch

        from ect_scale.eval.classifier import ClassifierDetector
        from ect_scale.eval.images import decoded_shards
        from ect_scale.eval.offline import image_stats, split_halves

        self.base, self.num, self.cache, self.device = base, num, cache, torch.device("cpu")
        self.detector = ClassifierDetector(os.path.join(base, "classifier.safetensors"), self.device)
        self.images, self.labels, _ = decoded_shards(os.path.join(base, "data", "manifest.json"))
        self.half_a, self.half_b = split_halves(len(self.images))
        self.ref = image_stats(self.detector, self.images[self.half_a])
        exports = cache.setdefault("exports", {})
        for key in [k for k in exports if "|" not in k]:  # Older caches: keyed by file, scored at its t_mid.
            entry = exports.pop(key)
            exports[f"{key}|t_mid={entry['t_mid']:g}"] = entry

    def rows(self, net, specs: list) -> list:
        from ect_scale.eval.offline import Row, score_rows

        rows = [Row(spec.name, net, spec) for spec in specs]
        return score_rows(rows, self.encoder, self.detector, self.ref, self.num, self.device)

    def load(self, path: str):
        from ect_scale.eval.pipeline import load_for_eval

        net, _, self.encoder = load_for_eval(path, self.device)
        return net

    def references(self) -> None:
        """The floor (real images of half B) and the teacher's Heun-32 samples, once."""
        from ect_scale.eval.offline import real_row
        from ect_scale.eval.sampling import SamplerSpec

        if "floor" in self.cache:
            return
        floor = real_row(
            self.detector, self.images[self.half_b[: self.num]], self.labels[self.half_b[: self.num]], self.ref
        )
        teacher = self.load(sorted(glob.glob(os.path.join(self.base, "teacher", "ema", "*.safetensors")))[-1])
        heun = self.rows(teacher, [SamplerSpec(kind="heun", num_steps=32)])[0]
        self.cache["floor"] = {"fd": floor.fd, "accuracy": floor.accuracy}
        self.cache["teacher_heun32"] = {"fd": heun.fd, "accuracy": heun.accuracy, "nfe": 63}

    def score(self, path: str, t_mid: float) -> dict:
        """FD and class accuracy at 1 step and at 2 steps with `t_mid` (the 1-step score is shared across t_mid)."""
        from ect_scale.eval.sampling import SamplerSpec
        from ect_scale.networks.netfile import read_network_header

        exports, rel = self.cache["exports"], os.path.relpath(path)
        key = f"{rel}|t_mid={t_mid:g}"
        if key not in exports:
            t0 = time.time()
            done = next((v for k, v in exports.items() if k.startswith(rel + "|")), None)
            specs = [SamplerSpec(kind="consistency", t_mid=(t_mid,))] + (
                [] if done else [SamplerSpec(kind="consistency")]
            )
            rows = self.rows(self.load(path), specs)
            one = {"fd1": done["fd1"], "acc1": done["acc1"]} if done else {"fd1": rows[1].fd, "acc1": rows[1].accuracy}
            _, meta = read_network_header(path)
            exports[key] = {
                "nimg": int(meta["nimg"]),
                "train_flops": float(meta["compute"]["train_flops"]),
                "fd2": rows[0].fd,
                "acc2": rows[0].accuracy,
                "t_mid": t_mid,
                **one,
            }
            took = time.time() - t0
            print(f"scored {key}: FD 1 step {exports[key]['fd1']:.2f}, 2 steps {rows[0].fd:.2f} ({took:.0f} s)")
        return exports[key]

    def choose_t_mid(self, items: list[dict], values: list[float]) -> None:
        """Each method's own t_mid: the best 2-step FD over `values` for its seed-0 export at ECT's budget (once
        per method, when that export exists; the recipe's until then; the choice and the sweep are kept in the
        cache)."""
        chosen = self.cache.setdefault("t_mid_own", {})
        if "teacher" not in self.cache.setdefault("t_mid_sweep", {}):  # The start of every run, used as f(x, t).
            teacher = sorted(glob.glob(os.path.join(self.base, "teacher", "ema", "*.safetensors")))[-1]
            scores = {v: self.score(teacher, v) for v in values}
            self.cache["t_mid_sweep"]["teacher"] = {f"{v:g}": sc["fd2"] for v, sc in scores.items()}
            best = min(scores, key=lambda v: scores[v]["fd2"])
            self.cache["teacher_as_f"] = {"t_mid": best, "fd2": scores[best]["fd2"], "fd1": scores[best]["fd1"]}
        for method in sorted({i["method"] for i in items} - set(chosen)):
            mine = [i for i in items if i["method"] == method and i["seed"] == 0]
            mine = [i for i in mine if int(i["nimg_file"]) == ECT_NIMG // 1000]
            if not mine:
                continue
            item = mine[0]
            fds = {v: self.score(item["path"], v)["fd2"] for v in values}
            chosen[method] = min(fds, key=fds.get)
            self.cache.setdefault("t_mid_sweep", {})[method] = {f"{v:g}": fd for v, fd in fds.items()}
            print(
                f"t_mid for {method}: {chosen[method]:g} ("
                + ", ".join(f"{v:g}: {fd:.2f}" for v, fd in fds.items())
                + ")"
            )


def score_all(items: list[dict], scorer: Scorer) -> list[dict]:
    """One row per (export, kind): kind "shared" samples at the run's recipe t_mid (ECT's 6.0 for all three),
    "own" at the method's own t_mid (`Scorer.choose_t_mid`; the recipe's until one is chosen)."""
    from ect_scale.config import load_config

    scorer.references()
    rows = []
    for item in items:
        run_dir = os.path.dirname(os.path.dirname(item["path"]))
        shared = load_config(os.path.join(run_dir, "config.yaml")).ect.t_mid[0]
        own = scorer.cache.get("t_mid_own", {}).get(item["method"], shared)
        for kind, t_mid in (("shared", shared), ("own", own)):
            score = scorer.score(item["path"], t_mid)
            rows.append({**item, **score, "kind": kind, "budget": score["nimg"] / ECT_NIMG})
    return rows


# ----------------------------------------------------------------------------- report


def grid(rows: list[dict], method: str, key: str, kind: str = "own") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(budgets, compute, scores [seeds, budgets]) of one method, over the budgets every seed has."""
    mine = [r for r in rows if r["method"] == method and r["kind"] == kind]
    seeds = sorted({r["seed"] for r in mine})
    budgets = sorted(set.intersection(*[{r["budget"] for r in mine if r["seed"] == s} for s in seeds]))
    by = {(r["seed"], r["budget"]): r for r in mine}
    compute = np.array([np.mean([by[s, b]["train_flops"] for s in seeds]) for b in budgets])
    scores = np.array([[by[s, b][key] for b in budgets] for s in seeds])
    return np.array(budgets), compute, scores


def table(rows: list[dict], kind: str, boot: int) -> tuple[list[str], dict]:
    """The markdown rows of one t_mid choice and the k factors of CD and ECD against ECT."""
    _, ect_c, ect_s = grid(rows, "ect", "fd2", kind)
    _, _, ect_s1 = grid(rows, "ect", "fd1", kind)
    ect_scores, ect_compute = ect_s[:, -1], float(ect_c[-1])
    t_ect = next(r["t_mid"] for r in rows if r["method"] == "ect" and r["kind"] == kind)
    lines = [
        "| method | t_mid | budget (x ECT images) | images | train FLOPs | x ECT FLOPs | seeds | FD 2 steps | FD 1 step"
        " |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| ECT | {t_ect:g} | 1 | {ECT_NIMG:,} | {ect_compute:.3g} | 1.00 | {len(ect_scores)} | {_ms(ect_scores)} | "
        f"{_ms(ect_s1[:, -1])} |",
    ]
    verdicts = {}
    for method in ("cd", "ecd"):
        if not any(r["method"] == method for r in rows):
            continue
        budgets, compute, scores = grid(rows, method, "fd2", kind)
        _, _, scores1 = grid(rows, method, "fd1", kind)
        t_mid = next(r["t_mid"] for r in rows if r["method"] == method and r["kind"] == kind)
        for j, b in enumerate(budgets):
            lines.append(
                f"| {method.upper()} | {t_mid:g} | {b:g} | {int(round(b * ECT_NIMG)):,} | {compute[j]:.3g} | "
                f"{compute[j] / ect_compute:.2f} | {scores.shape[0]} | {_ms(scores[:, j])} | {_ms(scores1[:, j])} |"
            )
        k = k_factor(ect_scores, ect_compute, compute, scores)
        samples = bootstrap_k(ect_scores, ect_compute, compute, scores, boot)
        kmin, kmax = compute[0] / ect_compute, compute[-1] / ect_compute
        verdicts[method] = {"k": k, "text": describe_k(k, samples, kmin, kmax), "kmin": kmin, "kmax": kmax}
        k1 = k_factor(ect_s1[:, -1], ect_compute, compute, scores1)  # 1 step: the same for every t_mid.
        samples1 = bootstrap_k(ect_s1[:, -1], ect_compute, compute, scores1, boot)
        verdicts[method].update(k1=k1, text1=describe_k(k1, samples1, kmin, kmax))
    return lines, verdicts


def report(rows: list[dict], cache: dict, boot: int) -> tuple[str, dict]:
    floor, heun = cache["floor"], cache["teacher_heun32"]
    text = f"Teacher, Heun 32 steps (63 NFE): FD {heun['fd']:.2f}; real digits (the floor): FD {floor['fd']:.2f}.\n"
    if "teacher_as_f" in cache:  # Where all three start: zero training compute.
        t = cache["teacher_as_f"]
        text += (
            f"The teacher itself used as f(x, t) (every run's start): 1 step FD {t['fd1']:.2f}, 2 steps "
            f"{t['fd2']:.2f} at its best t_mid {t['t_mid']:g}.\n"
        )
    verdicts = {}
    titles = {"own": "each method at its own t_mid", "shared": "all at the recipe's t_mid (ECT's)"}
    for kind in ("own", "shared"):
        lines, verdicts[kind] = table(rows, kind, boot)
        text += f"\n### 2 steps with {titles[kind]}\n\n" + "\n".join(lines) + "\n\n"
        for method, v in verdicts[kind].items():
            text += f"- {method.upper()} needs {v['text']} of ECT's training compute to reach ECT's 2-step FD.\n"
            if kind == "own":
                text += f"- {method.upper()} needs {v['text1']} of ECT's training compute to reach ECT's 1-step FD.\n"
    for (run_a, run_b, nimg), (fd_a, fd_b) in duplicates(rows).items():
        same = "the same" if fd_a == fd_b else f"DIFFERENT ({fd_a:.4f} vs {fd_b:.4f})"
        text += f"\nConsistency: {run_a} and {run_b} exported at {nimg:,} images score {same} (2 steps, own t_mid)."
    sweeps = cache.get("t_mid_sweep", {})
    if sweeps:
        text += "\nt_mid sweeps (seed 0 at ECT's budget, 2-step FD): " + "; ".join(
            f"{m.upper()} " + ", ".join(f"{t}: {fd:.2f}" for t, fd in sw.items()) for m, sw in sweeps.items()
        )
        text += "\n"
    return text, verdicts


def duplicates(rows: list[dict]) -> dict:
    """{(run a, run b, images): (FD a, FD b)} for exports of one method and seed at the same images from two runs
    (CD's low-end run repeats the first 0.5x of the main one: identical training, so identical scores)."""
    seen, out = {}, {}
    for r in rows:
        if r["kind"] != "own":
            continue
        key = (r["method"], r["seed"], r["nimg"])
        if key in seen and seen[key]["run"] != r["run"]:
            out[(seen[key]["run"], r["run"], r["nimg"])] = (seen[key]["fd2"], r["fd2"])
        seen[key] = r
    return out


def reached(rows: list[dict], method: str, by: float = math.inf) -> bool:
    """Whether the seed mean of `method`'s 2-step FD (own t_mid) reaches ECT's at some budget scored so far, up to
    `by` x ECT's images."""
    if not any(r["method"] == method for r in rows):
        return False
    _, _, ect = grid(rows, "ect", "fd2")
    budgets, _, scores = grid(rows, method, "fd2")
    return bool((scores.mean(0)[budgets <= by + 1e-9] <= ect[:, -1].mean()).any())


def _ms(v: np.ndarray) -> str:
    return f"{v.mean():.2f} ± {v.std(ddof=1):.2f}" if len(v) > 1 else f"{v.mean():.2f}"


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.4))
    colors = {"ect": "black", "cd": "tab:red", "ecd": "tab:blue"}
    panels = (("fd2", "own", "2 steps, own t_mid"), ("fd2", "shared", "2 steps, ECT's t_mid"), ("fd1", "own", "1 step"))
    for ax, (key, kind, title) in zip(axes, panels):
        for method in ("ect", "cd", "ecd"):
            if not any(r["method"] == method for r in rows):
                continue
            _, compute, scores = grid(rows, method, key, kind)
            for s in scores:
                ax.plot(compute, s, "o" if method == "ect" else ".-", color=colors[method], alpha=0.3, lw=0.8)
            ax.plot(compute, scores.mean(0), "o-", color=colors[method], lw=2, label=method.upper() + " (seed mean)")
            if method == "ect":
                ax.axhline(scores.mean(), color="black", ls="--", lw=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("Compute/train_flops (teacher and target evaluations included)")
        ax.set_ylabel("FD_classifier (lower is better)")
        ax.set_title(f"digits, {title}")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
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
        mine = [r for r in rows if r["method"] == method and r["seed"] == 0 and r["kind"] == "own"]
        mine = sorted(mine, key=lambda r: r["budget"])
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
    scorer = Scorer(base, args.num, cache)
    try:
        if args.choose_t_mid:
            scorer.choose_t_mid(items, [float(v) for v in args.choose_t_mid.split(",")])
        rows = score_all(items, scorer)
    finally:
        with open(cache_path, "w") as f:
            json.dump(cache, f, indent=1)
    if args.score_only:
        return 0
    if args.reached:
        return 0 if reached(rows, args.reached, args.by) else 1
    text, verdicts = report(rows, cache, args.boot)
    with open(os.path.join(args.root, "comparison.md"), "w") as f:
        f.write(text)
    with open(os.path.join(args.root, "comparison.json"), "w") as f:
        json.dump({"rows": rows, "verdicts": verdicts, "t_mid_own": cache.get("t_mid_own")}, f, indent=1, default=float)
    plot(rows, os.path.join(args.root, "comparison.png"))
    write_grids(rows, os.path.join(args.root, "grids"))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
