#!/usr/bin/env bash
# Install the carried wheels (.whl/, built on a machine with network access) into /tmp/site on an offline GPU host.
# Build them with: pip wheel --no-deps --no-build-isolation deepspeed==0.19.8 -w .whl, plus
# pip download --no-deps --only-binary=:all: --python-version 3.12 ... -d .whl <its dependencies> (see BENCHMARKS.md).
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
export TORCH_CUDA_ARCH_LIST=9.0   # The default 9.0a breaks DeepSpeed's JIT op builder.
python3 -c "import deepspeed, torch; print('deepspeed', deepspeed.__version__, 'torch', torch.__version__, torch.cuda.get_device_name())"
