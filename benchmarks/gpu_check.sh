#!/usr/bin/env bash
# The one prepared GPU check (device machine: CUDA, torch, no internet), < 8 minutes:
#   1. build with the machine's torch: pip install --no-build-isolation .
#   2. the CUDA tests (pytest -m cuda) with DEEPREC_REQUIRE_CUDA=1: a skipped CUDA test
#      (wrong arch, old driver, no device) fails the step instead of passing it
#   3. compute-sanitizer memcheck, racecheck and synccheck over the CUDA kernel tests
#   4. the chunked multinomial loss on the GPU (benchmarks/multinomial_cost.py --device cuda)
#   5. the GPU benchmark report (benchmarks/report.py --device cuda), which includes the
#      GPU profile (benchmarks/gpu_profile.py: wall, GPU-busy, syncs and their source lines,
#      each kernel against its floor, against the torch backend of the same op and against
#      cuSPARSE/cuBLAS; training steps with both backends of the sparse layers side by side)
# The backend measured faster becomes the CUDA default in deeprec/ops/backends.py (DEFAULTS),
# with this run's report committed under benchmarks/results/.
# Everything lands in $OUT (default benchmarks/results/gpu-run): gpu_check.log, a
# summary line per step, and the report's .json/.md/.png. Steps run even when an
# earlier one fails; the exit code is the number of failed steps.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu-run}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
export PYTHONUNBUFFERED=1 DEEPREC_CUDA=1 DEEPREC_REQUIRE_CUDA=1 MPLBACKEND=Agg
# Build for the GPU that is present (e.g. compute capability 9.0 -> "90"), a 4x faster build
# than the full default list; DEEPREC_CUDA_ARCHS overrides it.
present_arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1 | tr -d ' .')
export DEEPREC_CUDA_ARCHS=${DEEPREC_CUDA_ARCHS:-${present_arch:-90}}
echo "building for CUDA arch $DEEPREC_CUDA_ARCHS" 
failed=0
step() {  # step NAME TIMEOUT_S CMD...
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  echo "== $name: $*"
  if timeout "$limit" "$@"; then
    echo "STEP $name: ok ($((SECONDS - t0)) s)" | tee -a "$OUT/summary.txt"
  else
    echo "STEP $name: FAILED rc=$? ($((SECONDS - t0)) s)" | tee -a "$OUT/summary.txt"
    failed=$((failed + 1))
  fi
}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
step build 120 python3 -m pip install -q --no-build-isolation --no-deps .
step info 20 python3 -m deeprec.info
step cuda-tests 120 python3 -m pytest -q -p no:cacheprovider -m cuda tests/
# The sanitizers see every kernel torch launches too; keep them on the kernel tests that
# need no compile (inductor's own kernels would dominate the time).
SAN_TESTS=(tests/test_masked_mse_cuda.py tests/test_sparse_cuda.py tests/test_kernel_checks.py
  tests/test_multinomial_op.py -m cuda -k "not compile" -q -p no:cacheprovider)
step memcheck 90 compute-sanitizer --tool memcheck --error-exitcode 9 python3 -m pytest "${SAN_TESTS[@]}"
step racecheck 60 compute-sanitizer --tool racecheck --error-exitcode 9 python3 -m pytest \
  tests/test_masked_mse_cuda.py tests/test_sparse_cuda.py -k "deterministic or empty or stream" -q \
  -p no:cacheprovider
step synccheck 60 compute-sanitizer --tool synccheck --error-exitcode 9 python3 -m pytest \
  tests/test_masked_mse_cuda.py tests/test_sparse_cuda.py -k "deterministic or empty or stream" -q \
  -p no:cacheprovider
# the chunked multinomial loss on the GPU: both epilogues (the native CUDA one becomes the
# default in deeprec/ops/backends.py only once this has measured it faster) against dense
step multinomial 120 python3 benchmarks/multinomial_cost.py --device cuda --runs 5 \
  --out "$OUT/multinomial_cost-cuda.json" --md "$OUT/multinomial_cost-cuda.md"
step report 240 python3 benchmarks/report.py --device cuda --quick --out "$OUT"
echo "gpu_check: $failed step(s) failed"
exit "$failed"
