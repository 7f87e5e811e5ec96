#!/usr/bin/env python3
"""Print each value of a YAML recipe that differs from the defaults (or is sourced) with its source.

    python tools/recipe_sources.py configs/ect-img512-m-ecm.yaml
    python tools/recipe_sources.py configs/ect-*.yaml          # exit status 1 if any value has no source

Sources live in the recipe's top-level `sources:` mapping (ect_scale/config/sources.py); the same checks run in
tests/config/test_recipe_sources.py.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from ect_scale.config.sources import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
