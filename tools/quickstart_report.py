#!/usr/bin/env python3
"""The quickstart's verdict: does ECT's 1-2-step generator match the teacher's many-step samples?

    python tools/quickstart_report.py --run runs/quickstart

Reads what launchers/quickstart.sh made under --run (data/, classifier.safetensors, teacher/ema/, ect/ema/),
samples the same seeds with the teacher (EDM Heun 32 steps, Heun 2 steps, Euler 2 steps) and with ECT (1 and 2
steps), and prints and saves (<run>/report/report.json) a table: the Fréchet distance of each to half of the
training data in the features of the quickstart's digit classifier, how it compares with the teacher's 32 steps,
and the classifier's accuracy on the class-conditional samples. Real images of the other half give the floor.
This is a development metric (ect_scale/eval/classifier.py), not FID. Sample grids (one row per class) are
written to <run>/report/.
"""

import argparse
import glob
import json
import os
import sys
import time

# ECT's 1-A100-hour CIFAR-10 run reaches 2-step FID 2.73 against its EDM teacher's 1.97 at 35 NFE (ECT Table 1;
# locuslab/ect README).
PAPER_RATIO = 2.73 / 1.97


def latest(pattern: str, what: str) -> str:
    files = sorted(glob.glob(pattern))
    if not files:
        raise FileNotFoundError(f"no {what} matches {pattern}. Fix: run launchers/quickstart.sh first (or pass --run)")
    return files[-1]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="runs/quickstart", help="the quickstart's output folder")
    ap.add_argument("--ect-ema", default="power-0.050", help="which ECT EMA to evaluate (the file name's profile)")
    ap.add_argument("--ect", default=None, metavar="DIR", help="the ECT run folder (default: <run>/ect)")
    ap.add_argument("--out", default=None, metavar="DIR", help="where to write the report (default: <run>/report)")
    ap.add_argument("--num", type=int, default=500, help="samples per row (and real images in the floor row)")
    ap.add_argument("--t-mid", type=float, default=None, help="ECT's 2-step time (default: the ECT run's ect.t_mid)")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from ect_scale.config import load_config
    from ect_scale.eval.classifier import ClassifierDetector
    from ect_scale.eval.images import decoded_shards
    from ect_scale.eval.offline import Row, format_rows, image_stats, real_row, score_rows, split_halves, to_json
    from ect_scale.eval.pipeline import load_for_eval
    from ect_scale.eval.sampling import SamplerSpec

    if args.threads:
        torch.set_num_threads(args.threads)
    t0, device, run = time.perf_counter(), torch.device("cpu"), args.run
    try:
        teacher_path = latest(os.path.join(run, "teacher", "ema", "*.safetensors"), "teacher EMA")
        ect_dir = args.ect or os.path.join(run, "ect")
        ect_path = latest(os.path.join(ect_dir, "ema", f"*-{args.ect_ema}.safetensors"), f"ECT EMA '{args.ect_ema}'")
        t_mid = args.t_mid or load_config(os.path.join(ect_dir, "config.yaml")).ect.t_mid[0]
        detector = ClassifierDetector(os.path.join(run, "classifier.safetensors"), device)
        images, labels, _ = decoded_shards(os.path.join(run, "data", "manifest.json"))
        teacher, _, encoder = load_for_eval(teacher_path, device)
        ect, _, _ = load_for_eval(ect_path, device)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    half_a, half_b = split_halves(len(images))
    num = min(args.num, len(half_b))
    ref = image_stats(detector, images[half_a])
    rows = [
        real_row(detector, images[half_b[:num]], labels[half_b[:num]], ref),
        Row("teacher, Heun 32 steps", teacher, SamplerSpec(kind="heun", num_steps=32)),
        Row("teacher, Heun 2 steps", teacher, SamplerSpec(kind="heun", num_steps=2)),
        Row("teacher, Euler 2 steps", teacher, SamplerSpec(kind="heun", num_steps=2, order=1)),
        Row("ECT, 1 step", ect, SamplerSpec(kind="consistency")),
        Row(f"ECT, 2 steps (t_mid {t_mid:g})", ect, SamplerSpec(kind="consistency", t_mid=(t_mid,))),
    ]
    score_rows(rows, encoder, detector, ref, num, device)
    baseline = rows[1]
    table = format_rows(rows, baseline)
    out_dir = args.out or os.path.join(run, "report")
    grids = write_grids(out_dir, rows, images, labels, half_b, encoder, device)
    report = {
        "rows": to_json(rows, baseline),
        "num": num,
        "reference": f"{len(half_a)} real images (half A)",
        "teacher": teacher_path,
        "ect": ect_path,
        "classifier": detector.describe(),
        "classifier_heldout_accuracy": detector.meta.get("heldout_accuracy"),
        "grids": grids,
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "report.json"), "w") as f:
        json.dump(report, f, indent=2)
    print(
        f"\nQuickstart report ({num} samples per row; FD in the features of the quickstart's digit classifier, "
        f"held-out accuracy {detector.meta.get('heldout_accuracy', float('nan')):.3f}; development metric, not FID)"
    )
    print(table)
    print(verdict(rows))
    print(f"Grids: {out_dir}/*.png   JSON: {out_dir}/report.json   ({report['wall_s']:.0f} s)")
    return 0


def verdict(rows) -> str:
    _, t32, t2, t2e, _, e2 = rows
    best2 = min(t2.fd, t2e.fd)  # The teacher's better 2-step sampler.
    gain = f"{best2 / e2.fd:.1f}x closer than" if e2.fd < best2 else f"{e2.fd / best2:.1f}x farther than"
    return (
        f"ECT 2 steps vs teacher 32 steps: {e2.fd / t32.fd:.2f}x the distance (target <= 2x; ECT's CIFAR-10 "
        f"1-hour run: {PAPER_RATIO:.2f}x); {gain} the teacher's best 2-step sampler; {e2.nfe} instead of "
        f"{t32.nfe} network evaluations."
    )


def write_grids(out_dir: str, rows, images, labels, half_b, encoder, device) -> dict:
    """One PNG per row: 10 classes x 10 samples (real: 10 images of each class from half B)."""
    import torch

    from ect_scale.ect import generate
    from ect_scale.eval.grids import auto_zoom, make_grid, save_png

    per, paths = 10, {}
    classes = [c for c in range(int(labels.max()) + 1) for _ in range(per)]
    for row in rows:
        if row.net is None:
            picks = torch.cat(
                [torch.as_tensor(half_b)[labels[half_b] == c][:per] for c in range(int(labels.max()) + 1)]
            )
            grid_images = images[picks]
        else:
            onehot = torch.nn.functional.one_hot(torch.tensor(classes), row.net.label_dim).float()
            kw = (
                dict(sampler="consistency", t_mid=row.spec.t_mid)
                if row.spec.kind == "consistency"
                else dict(sampler="heun", num_steps=row.spec.num_steps, order=row.spec.order)
            )
            grid_images = encoder.decode(generate(row.net, list(range(len(classes))), device, labels=onehot, **kw))
        name = row.spec.name if row.spec is not None else "real"
        paths[row.name] = os.path.join(out_dir, f"{name}.png")
        save_png(make_grid(grid_images.cpu(), cols=per, pad=2, zoom=auto_zoom(grid_images.shape[-1])), paths[row.name])
    return paths


if __name__ == "__main__":
    sys.exit(main())
