#!/usr/bin/env bash
# The GPU check (dev/gpu_check.py): the CUDA paths of a real run measured in one go, on one GPU or a node.
#   bash dev/gpu_check.sh                          # a GPU machine: d20/d26 bf16 + compile, decode, serve, torchrun
#   bash dev/gpu_check.sh --tiny                   # any machine: the same code on a tiny configuration (CI)
#   bash dev/gpu_check.sh --append_benchmarks      # also append the Markdown to dev/BENCHMARKS.md
# Writes dev/gpu_check/gpu_check.json and gpu_check.md; exits 1 if a section failed (each says why).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${NANOCHAT_PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=$(command -v python3)
exec "$PY" dev/gpu_check.py "$@"
