#!/usr/bin/env python3
"""Train the small classifier behind the offline development metric `fd_classifier` on a (small) shard dataset.

    python tools/train_classifier.py --data runs/quickstart/data/manifest.json --out
    runs/quickstart/classifier.safetensors
    python tools/fid_ref.py --shards runs/quickstart/data/manifest.json --classifier
    runs/quickstart/classifier.safetensors --out refs.npz
    python launchers/evaluate.py --net EMA --classifier runs/quickstart/classifier.safetensors --ref refs.npz
    --num-samples 1000

The metric is the Fréchet distance in this classifier's penultimate features, plus the accuracy of class-conditional
samples (tools/quickstart_report.py). It compares models of one dataset under one classifier file; it is not FID
(ect_scale/eval/classifier.py). Latent datasets need --vae to decode to pixels first.
"""

import argparse
import sys
import time


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, metavar="MANIFEST", help="shards manifest.json (local or URL)")
    ap.add_argument("--out", required=True, metavar="FILE", help="classifier file to write (.safetensors)")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--holdout", type=float, default=0.1, help="fraction held out to report accuracy")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vae", default=None, metavar="DIR", help="local SD-VAE directory (latent datasets)")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    args = ap.parse_args(argv)
    import torch

    from ect_scale.data.storage import StorageError
    from ect_scale.eval.classifier import save_classifier, train_classifier
    from ect_scale.eval.images import decoded_shards

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    try:
        images, labels, manifest = decoded_shards(args.data, args.vae)
    except (StorageError, ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    model, report = train_classifier(images, labels, epochs=args.epochs, holdout=args.holdout, seed=args.seed)
    save_classifier(
        args.out,
        model,
        {
            **report,
            "data": args.data,
            "num_images": len(images),
            "resolution": list(images.shape[-2:]),
            "class_names": manifest.class_names,
        },
    )
    print(f"[classifier] wrote {args.out} ({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
