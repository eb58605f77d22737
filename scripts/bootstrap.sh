#!/usr/bin/env bash
# Install what synctasks' demo, tests and benchmarks need, once:
# Debian packages (OpenSSH server and client, rsync, Dropbear, BusyBox,
# ShellCheck, sudo, Python venv) and a virtualenv in .venv with synctasks
# and its test dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)
command -v scp >/dev/null 2>&1 || missing+=(openssh-client)
command -v ssh-keygen >/dev/null 2>&1 || missing+=(openssh-client)
command -v rsync >/dev/null 2>&1 || missing+=(rsync)
[ -x /usr/sbin/dropbear ] || missing+=(dropbear-bin)
command -v busybox >/dev/null 2>&1 || missing+=(busybox)
command -v shellcheck >/dev/null 2>&1 || missing+=(shellcheck)
command -v sudo >/dev/null 2>&1 || missing+=(sudo)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)

if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then sudo=""; elif command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
        echo "bootstrap: need the Debian packages ${missing[*]} and no root or sudo to install them" >&2
        exit 2
    fi
    echo "bootstrap: installing ${missing[*]}" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
# Reinstall only when the packaging metadata changed since the last install.
if [ ! -f .venv/.installed ] || [ setup.cfg -nt .venv/.installed ] || [ pyproject.toml -nt .venv/.installed ]; then
    echo "bootstrap: installing synctasks and its dependencies into .venv" >&2
    .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
    touch .venv/.installed
fi
# Byte-compile the package: an editable install leaves that to the first
# import, which never happens where PYTHONDONTWRITEBYTECODE is set (every
# start would then compile synctasks from source again).
.venv/bin/python -m compileall -q synctasks
