#!/usr/bin/env bash
# Set up this machine (idempotent) and run the whole test suite with lint and types.
set -euo pipefail
cd "$(dirname "$0")/.."
# `su` without `-` keeps a user's PATH, which often lacks the sbin directories.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
bash scripts/setup.sh --for tests
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
