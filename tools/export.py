#!/usr/bin/env python3
"""Export a consolidated network (online weights or any EMA) from a sharded training checkpoint, as a network
file (safetensors + config) that loads for sampling without DeepSpeed (`ect_scale.networks.netfile.load_network_file`).

    python tools/export.py runs/ect-s --what power-0.050 --out nets/ect-s-0.050.safetensors
    python tools/export.py runs/ect-s/checkpoints/ckpt-000012800000 --what all --out nets/
    python tools/export.py s3://bucket/runs/ect-s/checkpoints --what online --out nets/ --dtype float16
    python tools/export.py runs/ect-s --list

SRC is a run dir, a checkpoints root (`checkpoint.dir`, local or fsspec URL) or one ckpt-* folder; the newest
complete checkpoint is used unless --tag names one. --what is `online` (the fp32 master weights), an EMA profile
(`power-0.050`, `beta-0.9999`) or `all`. OUT is a .safetensors file, or a folder (ending in '/' or existing) that
receives `network-<kimg:07d>-<what>.safetensors`. The checkpoint may come from any world size and ZeRO stage: the
weights are assembled from the per-rank trainer-state files (DeepSpeed's zero_to_fp32 cannot read bf16 ZeRO-1
checkpoints). Every output is reloaded into the network to verify it.
"""

import argparse
import os
import sys

import torch

from ect_scale.checkpoint.export import available, consolidated_network, find_checkpoint
from ect_scale.networks.netfile import load_network_file, save_network_file
from ect_scale.runtime import entry
from ect_scale.runtime.errors import UserError


def out_path(out: str, nimg: int, what: str, several: bool) -> str:
    is_dir = out.endswith("/") or (os.path.isdir(out) and "://" not in out)
    if several and not is_dir:
        raise UserError(f"--out {out}: exporting several networks needs a folder", "end it with '/'")
    if is_dir:
        return f"{out.rstrip('/')}/network-{nimg // 1000:07d}-{what}.safetensors"
    if not out.endswith(".safetensors"):
        raise UserError(
            f"--out {out}: should end in .safetensors", "name a .safetensors file, or a folder ending in '/'"
        )
    return out


def _main(argv) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", metavar="SRC", help="run dir, checkpoints root or ckpt-* folder (local or URL)")
    ap.add_argument("--what", default="all", help="online, an EMA profile (power-0.050, beta-0.9999) or all")
    ap.add_argument("--out", default=None, help="output .safetensors file or folder (required unless --list)")
    ap.add_argument("--tag", default=None, help="checkpoint folder name (ckpt-<nimg>); default: the newest complete")
    ap.add_argument("--dtype", choices=["float32", "float16"], default="float32", help="stored dtype (default float32)")
    ap.add_argument("--list", action="store_true", help="print the checkpoint and its networks, write nothing")
    args = ap.parse_args(argv)
    ref = find_checkpoint(args.src, args.tag)
    names = available(ref)
    print(f"[export] {ref.display()}: {', '.join(names)}", flush=True)
    if args.list:
        return 0
    if args.out is None:
        ap.error("--out is required (a .safetensors file or a folder ending in '/')")
    whats = names if args.what == "all" else [args.what]
    dtype = torch.float16 if args.dtype == "float16" else None
    for what in whats:
        state, config, meta = consolidated_network(ref, what)
        path = out_path(args.out, meta["nimg"], what, len(whats) > 1)
        save_network_file(path, state, config, meta=meta, dtype=dtype)
        load_network_file(path)  # Verify: the file builds the network without DeepSpeed.
        print(f"[export] {what} at {meta['nimg']:,} images -> {path}", flush=True)
    return 0


def main(argv=None) -> int:
    return entry.run(lambda: _main(argv), program="export")


if __name__ == "__main__":
    sys.exit(main())
