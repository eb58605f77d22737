#!/usr/bin/env bash
# The whole test suite, against real throwaway SSH servers on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python -m pytest "$@"
