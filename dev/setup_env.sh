#!/usr/bin/env bash
# Create .venv and install nanochat with its Rust extension (sourced by speedrun.sh and dev/test.sh).
# uv is used because its cache makes a reinstall take seconds; torch alone is a ~3 GB download.
set -euo pipefail
if ! command -v uv >/dev/null 2>&1; then
  python3 -m pip install --quiet uv || { echo "error: could not install uv with pip; install it from https://docs.astral.sh/uv/" >&2; exit 1; }
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "error: cargo (Rust) is needed to build the tokenizer: curl https://sh.rustup.rs -sSf | sh -s -- -y && source ~/.cargo/env" >&2
  exit 1
fi
uv venv --quiet --allow-existing .venv
# --compile-bytecode: with PYTHONDONTWRITEBYTECODE set (as on some CI machines) every process would
# otherwise recompile torch from source, ~5 s of CPU per `import torch`
uv pip install --quiet --compile-bytecode --python .venv/bin/python -e ".[dev${NANOCHAT_EXTRAS:+,$NANOCHAT_EXTRAS}]"
