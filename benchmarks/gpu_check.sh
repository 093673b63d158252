#!/usr/bin/env bash
# The H200 check: CUDA tests with the large hypothesis profile, then the op benchmarks; logs and CSV under $1.
#   bash benchmarks/gpu_check.sh "$OUT" [pytest paths...]
set -uo pipefail
out=${1:?usage: gpu_check.sh OUT [tests...]}
shift
export PYTHONUNBUFFERED=1 HYPOTHESIS_PROFILE=gpu
python -c "import torch, triton, transformers; print(torch.__version__, triton.__version__, transformers.__version__, torch.cuda.get_device_name())"
timeout 300 python -m pytest -q -p no:cacheprovider "${@:-tests/ops}" 2>&1 | tee "$out/gpu_tests.log" | tail -n 30
timeout 400 python -m benchmarks.ops --out "$out" ${OPS:+--ops "$OPS"} 2>&1 | tee "$out/bench.log"
