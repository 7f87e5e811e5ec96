#!/usr/bin/env python3
"""Time the official ECT code's training step (locuslab/ect, branch imgnet) on this GPU, for side-by-side rows in
BENCHMARKS.md. Nothing of that code is in this repository: fetch it into a git-ignored folder and pass its path.

    git clone -b imgnet https://github.com/locuslab/ect .official        # .official/ is git-ignored
    PYTHONPATH=.official python benchmarks/official_ect_step.py --preset s --precision fp32 --batch 32

The step is the official loop's (training/ct_training_loop.py): ECMLoss (online pass, RNG restore, no-grad
target pass with forced weight normalisation off), `.mean().backward()`, gradients through nan_to_num, Adam,
then its PowerFunctionEMA (3 stds) and TraditionalEMA updates. Shapes are ImageNet-512 latents (4x64x64, 1000
classes), ECT's last stage (every target pass runs), dropout as its ImageNet recipe (0.4 S / 0.5 M-XL at <= 16 px).
Precisions: fp32 with TF32 on, as its recipe (`--fp16=0`; the loop forces TF32 and fp16 reduced-precision
reductions on), and fp16 (`--fp16=1`: its Precond computes the U-Net in fp16, loss scale 1). Prints one JSON line.
"""

import argparse
import json
import sys
import time

CHANNELS = {"xs": 128, "s": 192, "m": 256, "l": 320, "xl": 384, "xxl": 448}
DROPOUT = {"xs": 0.4, "s": 0.4, "m": 0.5, "l": 0.5, "xl": 0.5, "xxl": 0.5}
LR = {"xs": 1e-3, "s": 1e-3, "m": 9e-4, "l": 8e-4, "xl": 7e-4, "xxl": 6.5e-4}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="s", choices=sorted(CHANNELS))
    ap.add_argument("--precision", default="fp32", choices=["fp32", "fp16"])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--no-ema", action="store_true", help="leave out the two EMA updates")
    ap.add_argument("--out", default=None, help="also append the JSON line here")
    args = ap.parse_args(argv)
    import torch

    try:
        import training.loss  # noqa: F401  (the official code, put on PYTHONPATH by the caller)
    except ImportError:
        print(
            "error: the official code is not importable. Fix: run with PYTHONPATH=<checkout of locuslab/ect, "
            "branch imgnet>, e.g. PYTHONPATH=.official",
            file=sys.stderr,
        )
        return 2
    from training.loss import ECMLoss  # noqa: E402  (the official code, from PYTHONPATH)
    from training.networks_edm2 import Precond  # noqa: E402
    from training.phema import PowerFunctionEMA, TraditionalEMA  # noqa: E402

    torch.backends.cudnn.benchmark = True  # As the official loop (--bench default True).
    torch.backends.cudnn.allow_tf32 = True  # The official loop sets these three unconditionally.
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = True
    device = torch.device("cuda")
    torch.manual_seed(0)
    net = Precond(
        img_resolution=64,
        img_channels=4,
        label_dim=1000,
        use_fp16=args.precision == "fp16",
        model_channels=CHANNELS[args.preset],
        dropout=DROPOUT[args.preset],
        dropout_res=16,
    )
    net = net.to(device).train().requires_grad_(True)
    opt = torch.optim.Adam(net.parameters(), lr=LR[args.preset], betas=(0.9, 0.99), eps=1e-8)
    loss_fn = ECMLoss(P_mean=-0.8, P_std=1.6, q=4, c=0.06, k=8.0, b=1.0)
    loss_fn.update_schedule(3)  # ECT ImageNet's last stage: Delta t / t = n(t) / 256, the target pass always runs.
    emas = [] if args.no_ema else [PowerFunctionEMA(net, stds=[0.010, 0.050, 0.100]), TraditionalEMA(net, 0.9999)]
    gen = torch.Generator(device=device).manual_seed(1)
    nimg = 0

    def step():
        nonlocal nimg
        images = torch.randn([args.batch, 4, 64, 64], device=device, generator=gen) * 0.5
        labels = torch.nn.functional.one_hot(torch.randint(1000, [args.batch], device=device, generator=gen), 1000)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net=net, images=images, labels=labels.float())
        loss.mul(1).mean().backward()
        for p in net.parameters():
            if p.grad is not None:
                torch.nan_to_num(p.grad, nan=0, posinf=0, neginf=0, out=p.grad)
        opt.step()
        nimg += args.batch
        for ema in emas:
            ema.update(cur_nimg=nimg, batch_size=args.batch)

    for _ in range(args.warmup):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    torch.cuda.synchronize()
    sec = time.perf_counter() - t0
    out = {
        "code": "locuslab/ect@imgnet",
        "preset": f"edm2-img512-{args.preset}",
        "precision": args.precision,
        "tf32": True,
        "batch": args.batch,
        "steps": args.steps,
        "emas": len(emas) and 4,
        "img_per_sec": args.batch * args.steps / sec,
        "sec_per_step": sec / args.steps,
        "peak_mem_gb": torch.cuda.max_memory_allocated() / 2**30,
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
    }
    line = json.dumps(out)
    print(line, flush=True)
    if args.out:
        with open(args.out, "a") as f:
            f.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
