#!/usr/bin/env bash
# Set up the environment and run every check CI runs: Rust unit tests, ruff, the pytest suite.
# Usage (from anywhere): bash dev/test.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
# bench (PyPI rustbpe, HF tokenizers) and ko (konlpy) so the parity and Korean tests run, not skip
export NANOCHAT_EXTRAS="${NANOCHAT_EXTRAS:-bench,ko}"
source dev/setup_env.sh
(cd rustbpe && cargo test --quiet)
.venv/bin/ruff check .
.venv/bin/python -m pytest "$@"
