#!/usr/bin/env bash
# Set up the environment and run every check CI runs: Rust unit tests, ruff, the pytest suite.
# Usage (from anywhere): bash dev/test.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
source dev/setup_env.sh
(cd rustbpe && cargo test --quiet)
.venv/bin/ruff check .
.venv/bin/python -m pytest "$@"
