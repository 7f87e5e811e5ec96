#!/usr/bin/env python3
"""Print parameters and forward FLOPs of a network preset as one JSON object (CPU only, meta device, seconds).

    python tools/model_stats.py --preset edm2-img512-s
    python tools/model_stats.py --all          # one JSON object per line, every preset

fwd_flops is hardware FLOPs per sample for one forward pass (2 x EDM2's MAC-based "Gflops").
"""

import argparse
import json
import sys

from ect_scale.config import NetworkConfig, from_dict
from ect_scale.config.presets import PRESETS, TABLE6_MPARAMS
from ect_scale.networks.flops import model_stats
from ect_scale.runtime import entry


def stats_for(preset: str) -> dict:
    cfg = from_dict(NetworkConfig, {"preset": preset}, "network")
    s = model_stats(cfg)
    out = {
        "preset": preset,
        "params": s["params"],
        "params_M": round(s["params"] / 1e6, 2),
        "fwd_flops": s["fwd_flops"],
        "fwd_gflops": round(s["fwd_flops"] / 1e9, 2),
        "fwd_macs": s["fwd_macs"],
        "fwd_matmul_flops": s["fwd_matmul_flops"],
        "train_step_flops": s["train_step_flops"],
    }
    if preset in TABLE6_MPARAMS:
        out["edm2_table6_params_M"] = TABLE6_MPARAMS[preset]
    return out


def _main(argv) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), help="network preset")
    ap.add_argument("--all", action="store_true", help="every preset, one JSON object per line")
    args = ap.parse_args(argv)
    if not args.all and not args.preset:
        ap.error("give --preset NAME or --all")
    for name in sorted(PRESETS) if args.all else [args.preset]:
        print(json.dumps(stats_for(name)))
    return 0


def main(argv=None) -> int:
    return entry.run(lambda: _main(argv), program="model_stats")


if __name__ == "__main__":
    sys.exit(main())
