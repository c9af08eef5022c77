#!/usr/bin/env bash
# Set up the environment and run every check CI runs: Rust unit tests, ruff, the whole pytest suite.
# Usage (from anywhere): bash dev/test.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
# bench (PyPI rustbpe, HF tokenizers) and ko (konlpy) so the parity and Korean tests run, not skip
export NANOCHAT_EXTRAS="${NANOCHAT_EXTRAS:-bench,ko}"
source dev/setup_env.sh
# the web UI test drives Debian's Chromium through Playwright (never `playwright install`: it needs a CDN)
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq chromium >/dev/null
  else
    echo "error: the browser test needs chromium: sudo apt-get install chromium" >&2; exit 1
  fi
fi
(cd rustbpe && cargo test --quiet)
.venv/bin/ruff check .
# every test, the slow end-to-end runs included (a plain `pytest` skips those)
.venv/bin/python -m pytest -m "slow or not slow" "$@"
