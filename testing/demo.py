"""``python -m testing.demo``: a real sync in one command.

Starts the throwaway OpenSSH server of :mod:`testing.testserver` on
127.0.0.2-4 (three "hosts"), writes a demo project (config.ini,
connection_info.json, hosts/*.json and a small site) under .demo/, then runs
``fab sync`` twice: the first run sends everything, the second sends nothing.
Everything stays on loopback and under .demo/.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .testserver import TestServer, loopback_addresses

ROOT = Path(__file__).resolve().parent.parent


def make_site(folder: Path) -> None:
    (folder / "assets" / "css").mkdir(parents=True, exist_ok=True)
    (folder / "assets" / "img").mkdir(parents=True, exist_ok=True)
    (folder / "index.html").write_text("<h1>synctasks demo</h1>\n")
    (folder / "about us.html").write_text("<p>names with spaces arrive intact</p>\n")
    (folder / "assets" / "css" / "site.css").write_text("body { font-family: sans-serif; }\n")
    for i in range(20):
        (folder / "assets" / "img" / f"pixel-{i:02d}.bin").write_bytes(os.urandom(4096))
    script = folder / "deploy-hook.sh"
    script.write_text("#!/bin/sh\necho deployed\n")
    script.chmod(0o755)


def main() -> int:
    base = ROOT / ".demo"
    shutil.rmtree(base, ignore_errors=True)
    project = base / "project"
    (project / "hosts").mkdir(parents=True)
    make_site(project / "site")
    (project / "motd").write_text("Managed by synctasks\n")
    addresses = loopback_addresses(3)
    with TestServer(base / "server", addresses=addresses) as server:
        remote = server.make_writable_dir(base / "remote")
        known_hosts = server.write_known_hosts(base / "known_hosts")
        entries = [server.connection_entry(a, "password" if server.password and i == 0 else "key")
                   for i, a in enumerate(addresses)]
        info = project / "connection_info.json"
        info.write_text(json.dumps(entries, indent=2) + "\n")
        info.chmod(0o600)
        for address in addresses:
            mappings = [{"src": "site", "dest": f"{remote}/{address}/var/www/site"},
                        {"src": "motd", "dest": f"{remote}/{address}/etc/"}]
            (project / "hosts" / f"{address}.json").write_text(json.dumps(mappings, indent=2) + "\n")
        (project / "config.ini").write_text(
            "[sync]\nconnections = 3\n\n[security]\nhost_key_policy = strict\n"
            f"known_hosts = {known_hosts}\n"
        )
        fab = [str(Path(sys.executable).with_name("fab")), "sync", "--config", str(project / "config.ini")]
        print(f"demo: throwaway sshd on {', '.join(addresses)} port {server.port}; project in {project}")
        for attempt in ("first sync (sends everything)", "second sync (nothing changed, sends nothing)"):
            print(f"\n$ fab sync --config {project / 'config.ini'}    # {attempt}", flush=True)
            started = time.monotonic()
            status = subprocess.call(fab, cwd=ROOT)
            print(f"(exit status {status}, {time.monotonic() - started:.2f}s wall time)")
            if status:
                return status
        files = sorted(p for p in remote.rglob("*") if p.is_file())
        total = sum(p.stat().st_size for p in files)
        print(f"\ndemo: {len(files)} files, {total} bytes now under {remote} (one folder per host);"
              f" logs in {project / 'logs'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
