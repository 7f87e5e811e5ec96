#!/usr/bin/env python3
"""Convert an NVIDIA EDM2 snapshot pickle into an ect_scale network file, without running code from the pickle.

    python tools/import_edm2.py edm2-img512-s-2147483-0.130.pkl pretrained/edm2-img512-s-2147483-0.130.safetensors
    python tools/import_edm2.py s3://bucket/edm2/network-snapshot-2147483-0.100.pkl pretrained/   # name from IN
    python tools/import_edm2.py \\
        https://nvlabs-fi-cdn.nvidia.com/edm2/posthoc-reconstructions/edm2-img64-s-1073741-0.075.pkl pretrained/

IN is a local path or any fsspec URL (s3://, gs://, https://); OUT is a .safetensors path/URL or a directory.
Accepts network-snapshot-*.pkl, posthoc-reconstructions/*.pkl and ECT releases (same format). The pickle is
read with a restricted unpickler: the network source code embedded in it is never executed; anything other
than tensors, containers and the recorded hyperparameters is refused, naming the offending global.
Prints the matched preset, parameter count and encoder constants, then reloads the file into `Precond` to verify.
Point the training config's `init:` at OUT (see docs/import.md).
"""

import argparse
import os
import sys

from ect_scale.edm2_import import import_edm2
from ect_scale.edm2_import.convert import output_exists
from ect_scale.runtime import entry
from ect_scale.runtime.errors import UserError


def output_path(in_path: str, out: str) -> str:
    """OUT itself, or <OUT>/<name of IN>.safetensors when OUT is a directory (existing, or written with '/')."""
    if out.endswith("/") or (os.path.isdir(out) and "://" not in out):
        stem = os.path.basename(in_path.rstrip("/")).split("?")[0]
        stem = stem[:-4] if stem.endswith(".pkl") else stem
        return out.rstrip("/") + "/" + stem + ".safetensors"
    return out


def _main(argv) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("input", metavar="IN.pkl", help="EDM2 snapshot pickle: local path or fsspec URL")
    ap.add_argument("output", metavar="OUT", help="network file (.safetensors) or directory, local or fsspec URL")
    ap.add_argument(
        "--dtype",
        choices=["float32", "keep"],
        default="float32",
        help="stored tensor dtype: float32 (default; exact upcast of the pickle's fp16) or keep "
        "(the pickle's fp16, half the size)",
    )
    ap.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    ap.add_argument("--no-verify", action="store_true", help="skip reloading the written file into Precond")
    ap.add_argument("--no-forward", action="store_true", help="verify tensors only, without a forward pass")
    args = ap.parse_args(argv)

    out = output_path(args.input, args.output)
    if not out.endswith(".safetensors"):
        ap.error(f"OUT: '{out}' should end in .safetensors (or be a directory ending in '/')")
    if output_exists(out) and not args.force:
        raise UserError(f"{out} exists", "pass --force to overwrite it, or choose another OUT")
    result = import_edm2(
        args.input,
        out,
        dtype=args.dtype,
        verify=not args.no_verify,
        forward=not args.no_forward,
        log=lambda s: print(f"[import_edm2] {s}", flush=True),
    )
    print(result.summary())
    secs = ", ".join(f"{k} {v:.1f}s" for k, v in result.seconds.items())
    print(f"time       {secs}")
    print(
        f"next       set `init: {out}` and `network.preset: {result.config.preset or '<see arch above>'}` in your "
        "training config (docs/import.md)"
    )
    return 0


def main(argv=None) -> int:
    return entry.run(lambda: _main(argv), program="import_edm2")


if __name__ == "__main__":
    sys.exit(main())
