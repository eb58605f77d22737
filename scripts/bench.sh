#!/usr/bin/env bash
# Benchmarks: synctasks beside rsync and OpenSSH scp, side by side in one run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python bench/run.py "$@"
