"""Hostile names, symlinks and secrets, against the real sshd."""

from __future__ import annotations

import json
import os
import pwd

import pytest
from conftest import MAIN_HOSTS

from synctasks import inputs

ATTACKS = ["$(touch INJECTED-a)", "`touch INJECTED-b`", "; touch INJECTED-c", "| touch INJECTED-d",
           "&& touch INJECTED-e", "'; touch INJECTED-f; '", "\"; touch INJECTED-g; \"", "-rf", "--help",
           "C0644 1 x", "D0755 0 y", "E", "T1 0 1 0"]


def injected(server) -> list[str]:
    home = pwd.getpwnam(server.user).pw_dir
    return [n for n in os.listdir(home) if n.startswith("INJECTED")]


def test_names_built_to_attack_shell_and_scp_arrive_literally(project, server, remote):
    for name in ATTACKS:
        project.file(f"site/{name}", f"payload {name}\n")
        project.file(f"site/dir {name}/inner", "inner\n")
    project.add_host(server, MAIN_HOSTS[0], [{"src": "site", "dest": f"{remote}/$(touch INJECTED-h)/www"}])
    status, _, _ = project.run()
    assert status == 0
    dest = remote / "$(touch INJECTED-h)" / "www"
    for name in ATTACKS:
        assert (dest / name).read_text() == f"payload {name}\n"
        assert (dest / f"dir {name}" / "inner").read_text() == "inner\n"
    assert injected(server) == []
    assert not any(p.name.startswith("INJECTED") for p in remote.rglob("*") if "$(" not in str(p))


@pytest.mark.parametrize("mode", ["copy", "skip", "follow"])
def test_symlink_modes(project, server, remote, mode, capsys):
    outside = project.file("outside.txt", "secret outside src")
    project.file("site/real/file.txt", "real")
    os.symlink("real/file.txt", project.root / "site/link-in")
    os.symlink("real", project.root / "site/dirlink")
    os.symlink(str(outside), project.root / "site/link-out")
    os.symlink("..", project.root / "site/real/loop")
    project.config["sync"]["symlinks"] = mode
    project.add_host(server, MAIN_HOSTS[0], [{"src": "site", "dest": f"{remote}/www"}])
    status, out, err = project.run(capsys=capsys)
    assert status == 0
    dest = remote / "www"
    if mode == "copy":
        assert os.readlink(dest / "link-in") == "real/file.txt"
        assert os.readlink(dest / "link-out") == str(outside)  # kept a link: never followed
        assert os.readlink(dest / "real/loop") == ".."
    elif mode == "skip":
        assert not os.path.lexists(dest / "link-in") and not os.path.lexists(dest / "link-out")
        assert "symlink skipped" in err
    else:
        assert (dest / "link-in").read_text() == "real" and not (dest / "link-in").is_symlink()
        assert (dest / "dirlink/file.txt").read_text() == "real"
        assert not os.path.lexists(dest / "link-out") and "leads out of src" in err
        assert not os.path.lexists(dest / "real/loop") and "loops back" in err


def test_password_never_leaves_a_trace(project, server, remote, capsys, monkeypatch):
    project.file("site/a", "a")
    project.add_host(server, MAIN_HOSTS[0], [{"src": "site", "dest": f"{remote}/ok"}], auth="password")
    wrong = project.add_host(server, MAIN_HOSTS[1], [{"src": "site", "dest": f"{remote}/no"}], auth="password")
    wrong["passkey"] = "Wr0ng-Secret-Value"
    env_host = project.add_host(server, MAIN_HOSTS[2], [{"src": "site", "dest": f"{remote}/env"}], auth="password")
    del env_host["passkey"]
    env_host["passkey_env"] = "SYNCTASKS_T_SECRET"
    monkeypatch.setenv("SYNCTASKS_T_SECRET", server.password)
    report = project.root / "report.json"
    status, out, err = project.run("--verbose", "--json", str(report), capsys=capsys)
    assert status == 1
    project.write()
    inventory = inputs.load_inventory(project.config_path)
    texts = [out, err, report.read_text(), repr(inventory), str(inventory.hosts)]
    texts += [p.read_text() for p in (project.root / "logs").iterdir()]
    for secret in (server.password, "Wr0ng-Secret-Value"):
        for text in texts:
            assert secret not in text
    assert json.loads(report.read_text())["hosts"][1]["error"].startswith("login refused")
