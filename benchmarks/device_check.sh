#!/usr/bin/env bash
# The GPU check, as one prepared run of under 5 minutes (see the device tool's README):
#   run(command="bash benchmarks/device_check.sh", carry=[".whl"], timeout_s=420)
# CUDA tests with --interp-device cuda, the tiny-neo spec on CUDA (float32 and bfloat16), and the
# CUDA capture benchmark (Llama-3.2-1B shape, bfloat16). Logs land in $OUT.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site:$PWD || exit 1
export PYTHONUNBUFFERED=1 INTERP_ASSERT_CACHE=/tmp/interp_cache
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
timeout 120 python3 -m pytest -p interp_assert.pytest_plugin.plugin -p no:cacheprovider -q tests/measure/test_fused.py tests/measure/test_offload.py \
  -k "cuda or gpu" --interp-device cuda 2>&1 | tee "$OUT/tests.log" | tail -5
for dtype in float32 bfloat16; do
  timeout 60 python3 -m pytest -p interp_assert.pytest_plugin.plugin -p no:cacheprovider -q model_specs/tiny-neo.yaml \
    --interp-device cuda --interp-dtype "$dtype" 2>&1 | tee "$OUT/tiny-neo-$dtype.log" | tail -3
done
timeout 240 python3 benchmarks/capture.py --device cuda 2>&1 | tee "$OUT/benchmark.log" | tail -30
