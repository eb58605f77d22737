"""The host-type matrix: every kind of host synctasks promises to sync to,
each a real server on loopback (see conftest.HOST_TYPE_SERVERS), driven
through the console script like a user would.

GNU OpenSSH is the control; then OpenSSH without an SFTP subsystem, Dropbear
on a GNU userland, BusyBox over OpenSSH and over Dropbear, and the SFTP-only
accounts (internal-sftp, chrooted, sftp-server). The scp-only account cannot
be synced to and must say so in one line; what an SFTP-only account cannot
do (--checksum, sudo, protocol = scp) is refused up front in one line.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest
from conftest import MAIN_HOSTS, give, tree_state

from synctasks.constants import STAGING_PREFIX
from testing.testproxy import TcpProxy
from testing.testserver import SCP_ONLY_REFUSAL

#: Accounts that run shell commands: protocol = auto picks the shell backend.
SHELL_TYPES = ["gnu", "busybox", "dropbear-busybox"]
#: Accounts that only speak SFTP: protocol = auto picks the SFTP backend.
SFTP_TYPES = ["sftp-only", "sftp-chroot", "sftp-server"]
#: Shell accounts on GNU userlands that differ from the control in the SSH
#: server only (no SFTP subsystem; Dropbear): the first sync, the no-op run,
#: the cut and the backend choice run there too; the rest is the plan's
#: business and the control covers it.
GNU_VARIANTS = ["gnu-scp-only-server", "dropbear-gnu"]
SYNC_TYPES = SHELL_TYPES + SFTP_TYPES
ALL_SYNC_TYPES = SYNC_TYPES + GNU_VARIANTS
BUSYBOX_TYPES = ["busybox", "dropbear-busybox"]

#: Names that break naive remote shell commands, SCP headers or SFTP paths.
ODD_NAMES = ["with space.txt", "it's \"quoted\".txt", "$HOME and $(id).txt", "semi;colon|pipe&amp.txt",
             "-leading-dash", "ünïcødé-файл.txt", "back`tick`.txt"]
OLD_MTIME_NS = 1_500_000_000_123_456_000


def sync_types(*names: str):
    """Parametrize ``host_case`` (conftest) over these host types."""
    return pytest.mark.parametrize("host_case", names, indirect=True)


@pytest.fixture
def hosttype_project(project):
    # A host that stalls must fail the test, not hold the suite for a minute.
    project.config["sync"]["io_timeout"] = "5"
    return project


def make_tree(project) -> Path:
    src = project.root / "site"
    project.file("site/index.html", "<h1>hi</h1>\n")
    project.file("site/empty.txt", b"")
    project.file("site/bin/run.sh", "#!/bin/sh\necho run\n", mode=0o755)
    project.file("site/secret/key.pem", "PRIVATE\n", mode=0o600)
    project.file("site/data/blob.bin", os.urandom(200_000), mode=0o640)
    for name in ODD_NAMES:
        project.file(f"site/odd/{name}", f"content of {name}\n")
    project.file("site/dir with space/-dash dir/$x;y 'ü'.txt", "nested\n")
    (src / "empty dir").mkdir()
    os.utime(src / "index.html", ns=(OLD_MTIME_NS, OLD_MTIME_NS))
    return src


def synced_state(root: Path) -> dict[str, tuple]:
    """rel path -> (kind, bytes, mode, mtime in whole seconds): what a sync
    promises on every host type (BusyBox and SFTP v3 keep whole seconds)."""
    return {rel: (kind, data, mode, None if mtime is None else mtime // 1_000_000)
            for rel, (kind, data, mode, mtime, _) in tree_state(root).items()}


def leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith(STAGING_PREFIX)]


def sync(project, capsys, *args: str) -> tuple[int, str, str, dict | None]:
    """One console-script run with a JSON report: (status, stdout, stderr, report)."""
    report_path = project.root / f"report-{uuid.uuid4().hex[:8]}.json"
    status, out, err = project.run("--json", str(report_path), *args, capsys=capsys)
    report = json.loads(report_path.read_text()) if report_path.exists() else None
    return status, out, err, report


def host_report(report: dict | None, address: str) -> dict:
    assert report is not None, "no JSON report written"
    return next(h for h in report["hosts"] if h["host"] == address)


def add_site(project, case, src_name: str = "site", **extra) -> str:
    """Map ``src_name`` to the host's remote folder; returns the dest as the account sees it."""
    dest = case.remote.at("site")
    project.add_host(case.server, case.address, [{"src": src_name, "dest": dest, **extra}])
    return dest


def first_sync(project, case, capsys) -> Path:
    """make_tree + add_site + one run that must succeed; returns the local src."""
    src = make_tree(project)
    add_site(project, case)
    status, out, err, _ = sync(project, capsys)
    assert status == 0, f"first sync to {case.name} failed:\n{out}{err}"
    return src


@sync_types(*ALL_SYNC_TYPES)
def test_first_sync_arrives_intact_then_second_run_sends_nothing(hosttype_project, host_case, capsys):
    project, case = hosttype_project, host_case
    src = make_tree(project)
    add_site(project, case)
    status, out, err, report = sync(project, capsys)
    assert status == 0, out + err
    remote = case.remote.real / "site"
    assert synced_state(remote) == synced_state(src)
    assert (remote / "empty dir").is_dir() and list((remote / "empty dir").iterdir()) == []
    assert int((remote / "index.html").stat().st_mtime) == OLD_MTIME_NS // 10**9
    assert (remote / "bin/run.sh").stat().st_mode & 0o7777 == 0o755
    assert (remote / "secret/key.pem").stat().st_mode & 0o7777 == 0o600
    host = host_report(report, case.address)
    files = [p for p in src.rglob("*") if p.is_file()]
    assert host["ok"] is True and host["changed"] is True and host["sent"] == len(files)
    assert leftovers(case.remote.real) == []
    # The second run: nothing to send, nothing changed.
    before = tree_state(case.remote.real)
    status, out, err, report = sync(project, capsys)
    assert status == 0, "second run: " + out + err
    host = host_report(report, case.address)
    assert (host["sent"], host["deleted"], host["failed"], host["changed"]) == (0, 0, 0, False), host
    assert tree_state(case.remote.real) == before  # same inodes: nothing was even replaced


@sync_types(*SYNC_TYPES)
def test_changed_file_is_resent(hosttype_project, host_case, capsys):
    project, case = hosttype_project, host_case
    src = first_sync(project, case, capsys)
    before = tree_state(case.remote.real / "site")
    project.file("site/odd/with space.txt", "new and longer content\n")
    status, out, err, report = sync(project, capsys)
    assert status == 0, out + err
    host = host_report(report, case.address)
    assert (host["sent"], host["changed"]) == (1, True), host
    after = tree_state(case.remote.real / "site")
    assert synced_state(case.remote.real / "site") == synced_state(src)
    untouched = {k: v for k, v in after.items() if k != "odd/with space.txt"}
    assert untouched == {k: v for k, v in before.items() if k != "odd/with space.txt"}
    assert leftovers(case.remote.real) == []


@sync_types(*SYNC_TYPES)
def test_delete_removes_extraneous_remote_files(hosttype_project, host_case, capsys):
    project, case = hosttype_project, host_case
    src = first_sync(project, case, capsys)
    remote = case.remote.real / "site"
    (remote / "extra.txt").write_text("not in src")
    (remote / "old dir" / "sub").mkdir(parents=True)
    (remote / "old dir" / "sub" / "f").write_text("x")
    outside = case.remote.real / "outside.txt"  # next to dest, not inside it
    outside.write_text("keep")
    give(case.server, remote / "extra.txt", remote / "old dir", outside)
    status, out, err, _ = sync(project, capsys)
    assert status == 0 and (remote / "extra.txt").exists()  # no --delete, no deletion
    status, out, err, report = sync(project, capsys, "--delete")
    assert status == 0, out + err
    host = host_report(report, case.address)
    assert host["deleted"] >= 2 and host["changed"] is True and host["sent"] == 0, host
    assert synced_state(remote) == synced_state(src)
    assert outside.read_text() == "keep"


@sync_types(*SYNC_TYPES)
def test_dry_run_changes_nothing(hosttype_project, host_case, capsys):
    project, case = hosttype_project, host_case
    make_tree(project)
    add_site(project, case)
    status, out, err, report = sync(project, capsys, "--dry-run")
    assert status == 0, out + err
    assert "would" in out
    assert host_report(report, case.address)["dry_run"] is True
    assert list(case.remote.real.iterdir()) == []  # not even the dest folder
    status, out, err, _ = sync(project, capsys)
    assert status == 0, out + err
    project.file("site/index.html", "changed\n")
    project.file("site/new.txt", "new\n")
    (case.remote.real / "site" / "extra.txt").write_text("extraneous")
    give(case.server, case.remote.real / "site" / "extra.txt")
    before = tree_state(case.remote.real)
    status, out, err, report = sync(project, capsys, "--dry-run", "--delete")
    assert status == 0, out + err
    host = host_report(report, case.address)
    assert host["changed"] is True and host["dry_run"] is True  # it would change
    assert tree_state(case.remote.real) == before


@sync_types(*ALL_SYNC_TYPES)
def test_cut_mid_file_keeps_old_content_then_converges(hosttype_project, host_case, capsys):
    project, case = hosttype_project, host_case
    big = project.file("data/big.bin", os.urandom(2 << 20))
    target = case.remote.real / "big.bin"
    target.write_bytes(b"OLD CONTENT")
    give(case.server, target)
    with TcpProxy((case.address, case.server.port), listen=(case.address, 0)) as proxy:
        project.add_host(case.server, case.address, [{"src": "data/big.bin", "dest": case.remote.at("big.bin")}],
                         port=proxy.port)
        proxy.cut_after = 512 << 10
        status, out, err, _ = sync(project, capsys)
        assert status == 1 and proxy.cuts == 1, out + err
        assert target.read_bytes() == b"OLD CONTENT"
        assert f"{case.address}: FAILED" in out
        status, out, err, report = sync(project, capsys)
    assert status == 0, out + err
    assert target.read_bytes() == big.read_bytes()
    assert int(target.stat().st_mtime) == int(big.stat().st_mtime)
    assert leftovers(case.remote.real) == []
    assert host_report(report, case.address)["sent"] == 1


@sync_types(*ALL_SYNC_TYPES)
def test_report_names_the_backend(hosttype_project, host_case, capsys):
    project, case = hosttype_project, host_case
    project.file("site/a.txt", "a")
    add_site(project, case)
    status, out, err, report = sync(project, capsys)
    host = host_report(report, case.address)
    expected = "sftp" if case.name in SFTP_TYPES else "shell"  # the GNU server has SFTP too
    assert host.get("backend") == expected, f"backend {host.get('backend')!r}, expected {expected!r}: {host}"
    assert status == 0, out + err
    # ... and so does the summary line of the host.
    assert any(line.startswith(f"{case.address}: ok") and line.endswith(f"via {expected})")
               for line in out.splitlines()), out


@sync_types("scp-only-account")
def test_scp_only_account_is_refused_in_one_line(hosttype_project, host_case, capsys):
    project, case = hosttype_project, host_case
    project.file("site/a.txt", "a")
    add_site(project, case)
    status, out, err, report = sync(project, capsys)
    assert status == 1
    assert "the remote command stopped" not in out + err
    lines = [line for line in out.splitlines() if line.startswith(f"{case.address}: FAILED")]
    assert len(lines) == 1, out
    line = lines[0]
    assert SCP_ONLY_REFUSAL in line, line
    assert "shell" in line.lower() and "sftp" in line.lower(), line
    error = host_report(report, case.address)["error"]
    assert error and "\n" not in error and SCP_ONLY_REFUSAL in error, error
    assert list(case.remote.real.iterdir()) == []


@pytest.mark.parametrize("host_case", ["gnu", *BUSYBOX_TYPES], indirect=True)
def test_checksum_detects_same_size_same_mtime_change_or_is_refused(hosttype_project, host_case, capsys):
    project, case = hosttype_project, host_case
    src = first_sync(project, case, capsys)
    edited = src / "odd" / "with space.txt"
    info = edited.stat()
    original = edited.read_bytes()
    edited.write_bytes(original.upper())  # same size
    os.utime(edited, ns=(info.st_atime_ns, info.st_mtime_ns))  # same mtime
    remote_copy = case.remote.real / "site" / "odd" / "with space.txt"
    status, out, err, report = sync(project, capsys, "--checksum")
    host = host_report(report, case.address)
    if status == 0:
        assert host["sent"] == 1 and host["changed"] is True, host
        assert remote_copy.read_bytes() == original.upper()
        status, out, err, report = sync(project, capsys, "--checksum")
        host = host_report(report, case.address)
        assert status == 0 and (host["sent"], host["changed"]) == (0, False), host
    else:
        # Refused: one line saying why, and nothing sent.
        assert status == 1, out + err
        assert host["error"] and "checksum" in host["error"] and "\n" not in host["error"], host
        assert host["sent"] == 0 and remote_copy.read_bytes() == original


def refusal_of(host: dict, what: str) -> bool:
    """The host failed with one line naming ``what`` it cannot do and why
    (an SFTP-only account), not with a stall, a sudo prompt or a dead command."""
    error = (host["error"] or "").lower()
    return bool(error) and "\n" not in error and what in error and "sftp" in error \
        and "stalled" not in error and "no answer" not in error and "remote command stopped" not in error


def _sftp_with_gnu_neighbour(project, case, server, remote, mapping_extra: dict) -> str:
    """The SFTP-only host plus a GNU host in the same run (it must still sync)."""
    project.file("site/a.txt", "a")
    add_site(project, case, **mapping_extra)
    project.add_host(server, MAIN_HOSTS[0], [{"src": "site", "dest": f"{remote}/neighbour"}])
    return f"{remote}/neighbour/a.txt"


@sync_types(*SFTP_TYPES)
def test_checksum_on_sftp_only_is_refused_up_front(hosttype_project, host_case, server, remote, capsys):
    project, case = hosttype_project, host_case
    neighbour = _sftp_with_gnu_neighbour(project, case, server, remote, {})
    status, out, err, report = sync(project, capsys, "--checksum")
    assert status == 1, out + err
    host = host_report(report, case.address)
    assert refusal_of(host, "checksum"), host
    assert host["sent"] == 0 and list(case.remote.real.iterdir()) == []
    assert open(neighbour).read() == "a"


@sync_types(*SFTP_TYPES)
def test_sudo_on_sftp_only_is_refused_up_front(hosttype_project, host_case, server, remote, capsys):
    project, case = hosttype_project, host_case
    neighbour = _sftp_with_gnu_neighbour(project, case, server, remote, {"sudo": True})
    status, out, err, report = sync(project, capsys)
    assert status == 1, out + err
    host = host_report(report, case.address)
    assert refusal_of(host, "sudo"), host
    assert host["sent"] == 0 and list(case.remote.real.iterdir()) == []
    assert open(neighbour).read() == "a"


@pytest.mark.parametrize("protocol, backend", [("sftp", "sftp"), ("scp", "shell")])
@sync_types("gnu")
def test_protocol_setting_forces_the_backend(hosttype_project, host_case, protocol, backend, capsys):
    project, case = hosttype_project, host_case
    src = make_tree(project)
    add_site(project, case)
    project.config["sync"]["protocol"] = protocol
    status, out, err, report = sync(project, capsys)
    assert status == 0, out + err
    assert host_report(report, case.address).get("backend") == backend
    assert synced_state(case.remote.real / "site") == synced_state(src)


@sync_types("sftp-server")
def test_sftp_server_account_is_not_retried_as_a_network_fault(hosttype_project, host_case, capsys):
    project, case = hosttype_project, host_case
    project.config["sync"]["retries"] = "3"
    project.file("site/a.txt", "a")
    add_site(project, case)
    status, out, err, report = sync(project, capsys)
    assert status == 0, out + err
    assert "retry" not in err and "stalled" not in out + err
    assert (case.remote.real / "site" / "a.txt").read_text() == "a"


@pytest.mark.parametrize("host_case, protocol", [("sftp-only", "scp"), ("sftp-server", "scp"),
                                                 ("gnu-scp-only-server", "sftp")], indirect=["host_case"])
def test_forced_protocol_the_account_lacks_fails_in_one_line(hosttype_project, host_case, protocol, capsys):
    project, case = hosttype_project, host_case
    project.file("site/a.txt", "a")
    add_site(project, case)
    project.config["sync"]["protocol"] = protocol
    status, out, err, report = sync(project, capsys)
    assert status == 1, out + err
    error = host_report(report, case.address)["error"] or ""
    assert error and "\n" not in error and "protocol" in error, error
    assert "stalled" not in error and "remote command stopped" not in error, error
    assert list(case.remote.real.iterdir()) == []
