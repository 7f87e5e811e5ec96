#!/usr/bin/env bash
# Fill .whl/ (git-ignored; carried to the offline GPU host and installed by benchmarks/setup_gpu.sh) with the
# packages the GPU image lacks, pinned in benchmarks/wheels.txt: Python 3.12 manylinux wheels, plus a pure wheel
# of DeepSpeed built from its sdist (needs torch installed here). Run on a machine with network access:
#   bash benchmarks/fetch_wheels.sh [DEST]        (DEST defaults to .whl)
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-.whl}
mkdir -p "$DEST"
PLAT=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_34_x86_64)
grep -v '^deepspeed==' benchmarks/wheels.txt | sed 's/_/-/g' > "$DEST/.req"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${PLAT[@]}" \
  -d "$DEST" -r "$DEST/.req"
rm -f "$DEST/.req"
python3 -m pip wheel -q --no-deps --no-build-isolation -w "$DEST" "$(grep '^deepspeed==' benchmarks/wheels.txt)"
echo "$(ls "$DEST"/*.whl | wc -l) wheels, $(du -sh "$DEST" | cut -f1) in $DEST"
