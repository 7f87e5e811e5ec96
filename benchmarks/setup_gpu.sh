#!/usr/bin/env bash
# Install the carried wheels (.whl/, built on a machine with network access) into /tmp/site on an offline GPU host.
# Build them first with `bash benchmarks/fetch_wheels.sh` (the pinned list is benchmarks/wheels.txt), then pass
# `.whl` in the device call's carry list.
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=$PWD:/tmp/site:${PYTHONPATH:-}   # The package in place (run from the repository root).
export PATH=/tmp/site/bin:$PATH   # The wheels' commands (`deepspeed`, `torchrun` of the carried torch is already there).
export TORCH_CUDA_ARCH_LIST=9.0   # The default 9.0a breaks DeepSpeed's JIT op builder.
python3 -c "import deepspeed, torch; print('deepspeed', deepspeed.__version__, 'torch', torch.__version__, torch.cuda.get_device_name())"
