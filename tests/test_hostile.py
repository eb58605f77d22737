"""Hostile names, symlinks and secrets, against the real sshd."""

from __future__ import annotations

import json
import os
import pwd

import pytest
from conftest import MAIN_HOSTS, give

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


def all_output(project, out, err, report=None) -> list[str]:
    texts = [out, err] + [p.read_text(errors="replace") for p in (project.root / "logs").iterdir()]
    return texts + ([report.read_text()] if report else [])


def test_secret_forced_into_messages_is_masked_everywhere(project, server, remote, server_root, capsys):
    """The secret reaches messages (an auth error naming it, a remote error
    echoing it); it must be masked on the console, in both logs and the report."""
    project.file("site/a", "a")
    # The password pasted into "user" as well: the auth error names the user.
    swapped = project.add_host(server, MAIN_HOSTS[1], [{"src": "site", "dest": f"{remote}/no"}], auth="password")
    swapped["user"] = swapped["passkey"] = "Pasted-Secret-Value"
    # A dest holding the (right) password under a folder the user cannot write:
    # the remote error echoes the path.
    locked = server_root / "locked-root-only"
    locked.mkdir(exist_ok=True)
    locked.chmod(0o755)
    project.add_host(server, MAIN_HOSTS[0], [{"src": "site", "dest": f"{locked}/{server.password}/x"}],
                     auth="password")
    report = project.root / "report.json"
    status, out, err = project.run("--verbose", "--json", str(report), capsys=capsys)
    assert status == 1
    texts = all_output(project, out, err, report)
    for secret in (server.password, "Pasted-Secret-Value"):
        for text in texts:
            assert secret not in text
    info, error = (project.root / "logs/info.log").read_text(), (project.root / "logs/error.log").read_text()
    for text in (info, error, err):
        assert "login refused for user '********'" in text
        assert f"{locked}/********" in text  # the remote error, masked


def test_hostile_remote_names_are_escaped_in_every_output(project, server, remote, capsys):
    hostile = "x\n\x1b]0;PWNED\x07\x1b[2J"
    project.file("site/keep.txt", "k")
    dest = remote / "www"
    (dest / "sub").mkdir(parents=True)
    (dest / hostile).write_text("planted")
    (dest / "sub" / hostile).write_text("planted")
    give(server, dest)
    project.add_host(server, MAIN_HOSTS[0], [{"src": "site", "dest": str(dest)}])
    status, out, err = project.run("--delete", "--verbose", capsys=capsys)
    assert status == 0
    texts = all_output(project, out, err)
    for text in texts:
        assert "\x1b" not in text and "\x07" not in text and "PWNED\n" not in text
        assert not any(line.startswith("\x1b]0;PWNED") for line in text.splitlines())
    for text in (err, (project.root / "logs/info.log").read_text(), (project.root / "logs/error.log").read_text()):
        assert f"{dest}/x\\n\\x1b]0;PWNED\\x07\\x1b[2J" in text  # named, escaped


def test_non_utf8_local_names_keep_their_log_records(project, server, remote, capsys):
    site = project.root / "site"
    site.mkdir(parents=True)
    (site / "ok.txt").write_text("ok")
    os.mkfifo(os.fsencode(site) + b"/fifo-caf\xe9")  # skipped with a warning naming it
    os.symlink("ok.txt", os.fsencode(site) + b"/link-\xff")
    project.config["sync"]["symlinks"] = "skip"
    project.add_host(server, MAIN_HOSTS[0], [{"src": "site", "dest": f"{remote}/www"}])
    status, out, err = project.run(capsys=capsys)
    assert status == 0
    assert "Logging error" not in err
    for log in ("info.log", "error.log"):
        text = (project.root / "logs" / log).read_text()
        assert "fifo-caf\\xe9" in text and "link-\\xff" in text, text
