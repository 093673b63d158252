#!/usr/bin/env bash
# The H200 check, stage by stage, each under its own timeout; logs, CSV, tables and plots under $1. Exits 1 when a
# stage failed or timed out (the soak run fails when memory grew or the step was recompiled or recaptured).
#   bash benchmarks/gpu_check.sh "$OUT" [pytest paths...]
#   STAGES="baselines soak" bash benchmarks/gpu_check.sh "$OUT"
# Stages (all by default, in this order; name fewer in STAGES to fit a device command's 10 minutes):
#   tests      the CUDA tests with the large hypothesis profile, a process per test function (the paths given, else
#              tests/ops); the list in $1/gpu_tests.txt, the failures in $1/gpu_tests_failed.txt
#   ops        every op's lowering against its reference (OPS narrows it: OPS=tree_attention,kv_copy_)
#   baselines  end to end against transformers generate at B = 1 and B = 16
#   soak       B = 16, at least 10,000 new tokens per sequence through the captured step
#   e2e        the embedded model's step at B = 1 and 16 by phase         (under $1/e2e_default)
#   e2e_8b     the 8B-shaped step at B = 1 by phase, against its floor    (under $1/e2e_8b_1)
#   e2e_8b_16  the same at B = 16                                         (under $1/e2e_8b_16)
set -uo pipefail
out=${1:?usage: gpu_check.sh OUT [tests...]}
shift
export PYTHONUNBUFFERED=1 HYPOTHESIS_PROFILE=gpu
python -c "import torch, triton, transformers; print(torch.__version__, triton.__version__, transformers.__version__, torch.cuda.get_device_name())"
e2e() {  # e2e DIR ARGS...: one e2e call with its own results folder (e2e.md and e2e_phases.* are per call)
  local dir=$out/$1
  shift
  mkdir -p "$dir"
  timeout 570 python -m benchmarks.e2e --out "$dir" "$@" 2>&1 | tee "$dir/e2e.log"
}
tests() {  # tests [PATHS...]: one pytest process per test id (each parametrization apart), 12 at a time.
  # The CPU side of the large profile is the slow part (a kernel compiled for each new shape): a process per file once
  # fitted, but topk_expand's file took over 9 minutes alone once its rankings became networks (seventh session), and
  # its property test's six plans 8 minutes in one process (eighth).
  local paths=("${@:-tests/ops}") status=0
  python -m pytest -q -p no:cacheprovider --collect-only "${paths[@]}" | grep '::' > "$out/gpu_tests.txt"
  xargs -P 12 -I{} sh -c 'timeout 540 python -m pytest -q -p no:cacheprovider "$1" > "$2/gpu_tests_$(printf %s "$1" | tr -c "A-Za-z0-9_-" "_").log" 2>&1 ||
    echo "FAILED $1"' _ {} "$out" < "$out/gpu_tests.txt" | tee "$out/gpu_tests_failed.txt"
  [ -s "$out/gpu_tests_failed.txt" ] && status=1
  echo "$(wc -l < "$out/gpu_tests.txt") test ids, $(wc -l < "$out/gpu_tests_failed.txt") failed or timed out"
  return $status
}
failed=
for stage in ${STAGES:-tests ops baselines soak e2e e2e_8b e2e_8b_16}; do
  echo "=== $stage"
  case $stage in
    tests) tests "$@" ;;
    ops) timeout 570 python -m benchmarks.ops --out "$out" ${OPS:+--ops "$OPS"} 2>&1 | tee "$out/bench.log" ;;
    baselines) timeout 570 python -m benchmarks.baselines --out "$out" --batch 1 16 2>&1 | tee "$out/baselines.log" ;;
    soak) timeout 300 python -m benchmarks.soak --out "$out" --batch 16 --tokens 10000 2>&1 | tee "$out/soak.log" ;;
    e2e) e2e e2e_default --only default --batch 1,16 ;;
    e2e_8b) e2e e2e_8b_1 --only 8b --batch 1 ;;
    e2e_8b_16) e2e e2e_8b_16 --only 8b --batch 16 ;;
    *) echo "unknown stage $stage (see the top of $0)" >&2; false ;;
  esac || failed+=" $stage"
done
[ -z "$failed" ] || { echo "failed or timed out:$failed" >&2; exit 1; }
