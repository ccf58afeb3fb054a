#!/usr/bin/env bash
# Wheels the GPU machine lacks (its image has torch, transformers, accelerate, peft, matplotlib,
# pytest, hypothesis, but not these), for Python 3.12 on x86-64, into .whl/ (ignored by git).
# Run once here; then benchmarks/device_check.sh runs there with `carry: [".whl"]`.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude || echo /.whl/ >> .git/info/exclude
# the versions installed here, so both machines run the same pydantic and syrupy
pins=$(python3 -c "import importlib.metadata as m; print(' '.join(f'{n}=={m.version(n)}' for n in
  ('pydantic', 'pydantic_core', 'annotated_types', 'typing_inspection', 'syrupy', 'gguf')))")
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl $pins
ls .whl
