"""The README's composition example (a user's `deploy` task: sync, then
restart only where something changed), run as written with `fab -H`
against the test server."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import MAIN_HOSTS

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def deploy_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    return next(b for b in blocks if "def deploy(c)" in b)


def test_readme_deploy_task_with_fab_hosts(project, server, remote):
    app = remote / "app"
    (project.root / "fabfile.py").write_text(deploy_example().replace("/srv/app", str(app)))
    project.file("site/index.html", "<h1>v1</h1>")
    project.add_host(server, MAIN_HOSTS[0], [])
    project.write()
    env = dict(os.environ, PATH=f"{BIN}:{os.environ.get('PATH', '')}")
    argv = [str(BIN / "fab"), "-H", f"{server.user}@{MAIN_HOSTS[0]}:{server.port}", "-i", str(server.client_key),
            "deploy"]

    def deploy() -> subprocess.CompletedProcess:
        return subprocess.run(argv, cwd=project.root, capture_output=True, text=True, env=env, timeout=60)

    first = deploy()
    assert first.returncode == 0, first.stdout + first.stderr
    assert (app / "site/index.html").read_text() == "<h1>v1</h1>"
    assert (app / "restart.txt").exists()
    (app / "restart.txt").unlink()
    unchanged = deploy()
    assert unchanged.returncode == 0 and not (app / "restart.txt").exists()
    # A failed sync raises (SyncFailed): fab fails and nothing is restarted.
    (project.root / "site/index.html").write_text("<h1>v2</h1>")
    # (v1's size; within v1's second its mtime would be the same too)
    os.utime(project.root / "site/index.html", (os.path.getmtime(project.root / "site/index.html") + 10,) * 2)
    (app / "site").chmod(0o555)
    try:
        failed = deploy()
    finally:
        (app / "site").chmod(0o755)
    assert failed.returncode == 1 and "SyncFailed" in failed.stderr and "index.html" in failed.stderr
    assert not (app / "restart.txt").exists()
