#!/usr/bin/env python3
"""Post-hoc EMA: reconstruct an EMA of any sigma_rel from exported power-EMA snapshots (EDM2 Sec. 3.2, Alg. 3).

    python tools/phema.py runs/ect-s/ema --std 0.02,0.035,0.08 --out runs/ect-s/phema/
    python tools/phema.py s3://bucket/runs/ect-s/ema --std 0.05 --at-nimg 64M --out phema/ --dtype float16
    python tools/phema.py runs/ect-s/ema --std 0.05 --dry-run        # show the snapshots, weights and errors only

IN is a folder (local or fsspec URL) of network files written by the trainer every `ema.export_nimg`
(`ema-<kimg>-power-<sigma>.safetensors`); snapshots are recognised by their metadata (`ema` = power-<sigma>,
`nimg`), not their names. Only snapshots with 0 < nimg <= the output time are used. The output time defaults to
the newest snapshot. For each requested sigma_rel the tool solves EDM2's least-squares problem over the power-
function profiles, column-normalises the weights, prints the relative L2 error of the reconstructed averaging
profile (how well the snapshots can express that EMA: below 1e-3 is excellent; it grows for sigma_rel outside
the stored range and for sparse snapshots), and writes `phema-<kimg:07d>-<sigma:.3f>.safetensors` network files
(loadable with ect_scale.networks.netfile.load_network_file, no DeepSpeed). Inputs are streamed once per batch of
outputs.
"""

import argparse
import json
import sys

import fsspec
import numpy as np
import torch

from ect_scale.config import parse_nimg
from ect_scale.engine.phema import combine, profile_error, solve_posthoc_coefficients
from ect_scale.networks.netfile import read_network_file, save_network_file
from ect_scale.networks.precond import Precond
from ect_scale.runtime import entry
from ect_scale.runtime.errors import UserError


def read_meta(path: str) -> dict:
    """The `ect_scale.meta` JSON of a network file, reading only the safetensors header."""
    with fsspec.open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    return json.loads((header.get("__metadata__") or {}).get("ect_scale.meta", "{}"))


def list_snapshots(folder: str) -> list[tuple[int, float, str]]:
    """(nimg, sigma_rel, path) of every power-EMA snapshot in `folder`, by time then sigma."""
    fs, root = fsspec.core.url_to_fs(folder)
    proto = folder.split("://", 1)[0] + "://" if "://" in folder else ""
    found = []
    for p in sorted(fs.glob(root.rstrip("/") + "/*.safetensors")):
        path = proto + p if proto and not p.startswith(proto) else p
        try:
            meta = read_meta(path)
        except (OSError, ValueError):
            print(f"[phema] skipping unreadable {path}", file=sys.stderr)
            continue
        ema, nimg = str(meta.get("ema", "")), meta.get("nimg")
        if ema.startswith("power-") and nimg is not None and int(nimg) > 0:
            found.append((int(nimg), float(ema[len("power-") :]), path))
    return sorted(found)


def parse_stds(text: str) -> list[float]:
    stds = [float(s) for s in text.split(",") if s.strip()]
    bad = [s for s in stds if not 0 < s < 12**-0.5]
    if not stds or bad:
        raise UserError(
            f"--std: each sigma_rel must be in (0, 0.2887) (got {bad or text!r})", "pass e.g. --std 0.02,0.05,0.1"
        )
    return stds


def plan(snaps, stds: list[float], at_nimg: int | None):
    """Inputs used, the output time and the weights [n_in, n_out]."""
    if not snaps:
        raise UserError(
            "no power-EMA snapshots found",
            "point IN at <run_dir>/ema (files exported every ema.export_nimg with ema.stds set)",
        )
    t_out = at_nimg if at_nimg is not None else snaps[-1][0]
    used = [s for s in snaps if s[0] <= t_out]
    if len(used) < 2:
        raise UserError(
            f"only {len(used)} snapshots at or before {t_out:,} images",
            "choose a later --at-nimg, or export more often (ema.export_nimg)",
        )
    ofs, sig = [s[0] for s in used], [s[1] for s in used]
    X = solve_posthoc_coefficients(ofs, sig, [t_out] * len(stds), stds)
    return used, t_out, X, profile_error(ofs, sig, [t_out] * len(stds), stds, X)


def write_outputs(used, t_out: int, stds: list[float], X: np.ndarray, out: str, dtype, batch: int) -> list[str]:
    _, config, meta0 = read_network_file(used[0][2])
    buffers = {n for n, _ in Precond(config).named_buffers()}
    paths = []
    for lo in range(0, len(stds), batch):
        cols = list(range(lo, min(lo + batch, len(stds))))
        states = (read_network_file(p)[0] for _, _, p in used)
        for k, state in zip(cols, combine(states, X[:, cols], copy_keys=buffers)):
            path = f"{out.rstrip('/')}/phema-{t_out // 1000:07d}-{stds[k]:.3f}.safetensors"
            meta = {
                **meta0,
                "source": "ect_scale phema",
                "nimg": t_out,
                "ema": f"phema-{stds[k]:.3f}",
                "phema": {
                    "inputs": len(used),
                    "input_stds": sorted({s for _, s, _ in used}),
                    "first_nimg": used[0][0],
                    "last_nimg": used[-1][0],
                },
            }
            save_network_file(path, state, config, meta=meta, dtype=dtype)
            paths.append(path)
            print(f"[phema] wrote {path}", flush=True)
    return paths


def _main(argv) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("input", metavar="IN", help="folder of exported EMA snapshots (<run_dir>/ema), local or URL")
    ap.add_argument("--std", required=True, help="comma-separated sigma_rel values to reconstruct, e.g. 0.02,0.08")
    ap.add_argument(
        "--at-nimg", default=None, help="output time in images (12.8M, 64Mi, ...); default: the newest snapshot"
    )
    ap.add_argument("--out", default=None, help="output folder (local or URL); default: <IN>/../phema")
    ap.add_argument("--dtype", choices=["float32", "float16"], default="float32", help="stored dtype (default float32)")
    ap.add_argument("--batch", type=int, default=8, help="outputs per pass over the inputs (memory: batch x model)")
    ap.add_argument("--dry-run", action="store_true", help="print the plan and errors, write nothing")
    args = ap.parse_args(argv)

    stds = parse_stds(args.std)
    at = parse_nimg(args.at_nimg, "--at-nimg") if args.at_nimg is not None else None
    try:
        used, t_out, X, err = plan(list_snapshots(args.input), stds, at)
    except np.linalg.LinAlgError as e:
        raise UserError(
            f"the post-hoc EMA system cannot be solved ({e})",
            "use snapshots of more distinct times or sigma_rel values, or fewer outputs",
        ) from e
    in_stds = sorted({s for _, s, _ in used})
    print(
        f"[phema] {len(used)} snapshots of sigma_rel {in_stds} from {used[0][0]:,} to {used[-1][0]:,} images; "
        f"output at {t_out:,} images",
        flush=True,
    )
    for k, s in enumerate(stds):
        print(
            f"[phema]   sigma_rel {s:.3f}: profile error {err[k]:.2e}, weights in [{X[:, k].min():+.3f}, "
            f"{X[:, k].max():+.3f}]",
            flush=True,
        )
    if args.dry_run:
        return 0
    out = args.out or args.input.rstrip("/").rsplit("/", 1)[0] + "/phema"
    write_outputs(used, t_out, stds, X, out, torch.float16 if args.dtype == "float16" else None, args.batch)
    return 0


def main(argv=None) -> int:
    return entry.run(lambda: _main(argv), program="phema")


if __name__ == "__main__":
    sys.exit(main())
