#!/usr/bin/env bash
# A real `fab sync` to three throwaway SSH hosts on loopback (127.0.0.2-4).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python -m testing.demo "$@"
