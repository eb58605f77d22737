#!/usr/bin/env bash
# Benchmarks: synctasks beside rsync, OpenSSH scp and pssh, side by side in one run.
#   bash scripts/bench.sh --quick          # smoke test: small sizes, 1 round
#   bash scripts/bench.sh                  # every case (~10 min), 3 rounds
#   bash scripts/bench.sh --case changes   # one case; --list shows them
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
# The 16-host case compares with pssh's parallel-scp (Debian package pssh);
# GNU time (package time) measures peak RSS.
if ! command -v parallel-scp >/dev/null 2>&1 || [ ! -x /usr/bin/time ]; then
    if [ "$(id -u)" = 0 ]; then sudo=""; elif command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
        echo "bench: need the Debian packages pssh (parallel-scp) and time, and no root or sudo to install them" >&2
        exit 2
    fi
    echo "bench: installing pssh and time" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends pssh time >/dev/null
fi
# Measured runs import compiled code, as an installed synctasks does (also
# where PYTHONDONTWRITEBYTECODE is set: compiling a module on every import
# costs a run tens of milliseconds).
.venv/bin/python -m compileall -q synctasks >/dev/null
exec .venv/bin/python bench/run.py "$@"
