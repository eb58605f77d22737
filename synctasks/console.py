"""The ``synctasks`` console script (also ``python -m synctasks``).

Kept apart from :mod:`synctasks.cli` so it can decide, before paramiko is
imported, to spare the start-up the import of Invoke (paramiko only needs it
for ``Match exec`` lines in ssh_config, which we check for), and so it can
end with a fast exit once everything is flushed.
"""

from __future__ import annotations

import glob
import os
import re
import sys

MATCH_EXEC = re.compile(r"^\s*match\b.*\bexec\b", re.IGNORECASE | re.MULTILINE)


def _ssh_config_uses_match_exec() -> bool:
    paths = ["/etc/ssh/ssh_config", os.path.expanduser("~/.ssh/config"), *glob.glob("/etc/ssh/ssh_config.d/*")]
    for path in paths:
        try:
            with open(path, errors="replace") as handle:
                if MATCH_EXEC.search(handle.read()):
                    return True
        except OSError:
            continue
    return False


def _import_paramiko_without_invoke() -> None:
    if "paramiko" in sys.modules or "invoke" in sys.modules or _ssh_config_uses_match_exec():
        return
    sys.modules["invoke"] = None  # paramiko.config treats it as not installed
    try:
        import paramiko  # noqa: F401
    finally:
        del sys.modules["invoke"]  # Fabric, if a host needs it later, imports it normally


def main() -> None:
    _import_paramiko_without_invoke()
    from .cli import main as cli_main

    try:
        status = cli_main(lightweight=True)
    except KeyboardInterrupt:
        status = 130
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    import logging

    logging.shutdown()
    # Everything is flushed and closed: skipping the interpreter's teardown
    # saves tens of milliseconds, which a no-op sync in a CI loop notices.
    os._exit(status)


if __name__ == "__main__":
    main()
