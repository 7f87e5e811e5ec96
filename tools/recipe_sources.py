#!/usr/bin/env python3
"""Print each value of a YAML recipe that differs from the defaults (or is sourced) with its source.

    python tools/recipe_sources.py configs/ect-img512-m-ecm.yaml
    python tools/recipe_sources.py configs/ect-*.yaml          # exit status 1 if any value has no source

Sources live in the recipe's top-level `sources:` mapping (ect_scale/config/sources.py); the same checks run in
tests/config/test_recipe_sources.py.
"""

import os


def main(argv: list[str] | None = None) -> int:
    """Print the sourced values of recipes (tools/recipe_sources.py); exit 1 if any value lacks a source."""
    import argparse

    from ect_scale.config import load_config
    from ect_scale.config.sources import file_unsourced_options, sourced_rows, unsourced_options

    ap = argparse.ArgumentParser(description="Print every sourced or non-default value of a recipe with its source.")
    ap.add_argument("configs", nargs="+", help="YAML recipes")
    args = ap.parse_args(argv)
    bad = 0
    for path in args.configs:
        cfg = load_config(path)
        print(f"# {os.path.basename(path)}")
        for k, default, v, src in sourced_rows(cfg):
            print(f"{k} = {v!r}  (default/preset {default!r})\n    {src}")
        missing = unsourced_options(cfg) + [
            f"{k} (set in this file, sourced only in a base)" for k in file_unsourced_options(path)
        ]
        for k in missing:
            print(f"UNSOURCED {k}")
        bad += len(missing)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
