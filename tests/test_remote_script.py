"""The remote script itself (synctasks/backends/remote.sh), run under the
shells hosts have (dash, BusyBox ash) on this machine, as root: the defences
that keep root's operations where they belong, and its lint."""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from synctasks.backends.shell import HASHER, PERL_SINK, SCRIPT, Ops
from synctasks.constants import STAGING_PREFIX

HERE = Path(__file__).resolve().parent.parent
TOKEN = "node-1-0123456789abcdef"
BUSYBOX = shutil.which("busybox")


def test_shellcheck_passes():
    done = subprocess.run(["shellcheck", "-s", "sh", str(HERE / "synctasks/backends/remote.sh")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout


@pytest.fixture(params=["dash", "busybox"])
def shell(request, tmp_path):
    if request.param == "dash":
        return ["/bin/sh"], os.environ["PATH"]
    applets = tmp_path / "bb"
    applets.mkdir()
    for name in subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True).stdout.split():
        (applets / name).symlink_to(BUSYBOX)
    return [str(applets / "sh")], str(applets)


def run_ops(shell, build) -> list[tuple[str, int, str]]:
    """Run the script in ops mode on the operations ``build(ops)`` adds:
    [(op, status, its error output)]."""
    argv, path = shell
    ops = Ops(TOKEN)
    build(ops)
    ops.quit()
    done = subprocess.run(argv + ["-c", SCRIPT, "sh", "ops"], input=(TOKEN + "\n").encode() + ops.take(),
                          capture_output=True, env={"PATH": path}, timeout=30)
    out = done.stdout.decode("utf-8", "replace")
    assert out.startswith("I\0"), (out, done.stderr)
    found = re.findall(r"(.*?)\n@@" + re.escape(TOKEN) + r"@@ (\w+) (\d+)[^\n]*\n", out[2:], re.S)
    return [(op, int(status), text.strip()) for text, op, status in found]


@pytest.fixture
def scene(tmp_path):
    """A dest anyone could write (others' links planted in it) and a
    root-only folder holding a secret."""
    dest = tmp_path / "www"
    dest.mkdir()
    dest.chmod(0o777)
    private = tmp_path / "root-only"
    private.mkdir(mode=0o700)
    (private / "secret").write_text("s3cret")
    (private / "secret").chmod(0o600)
    return dest, private


def test_planted_staging_link_is_neither_used_nor_moved_from(shell, scene):
    """Another user links this run's staging name to a root-only folder: the
    staging folder is refused (made exclusively, entered and checked), and a
    move by name never takes files out of the linked folder."""
    dest, private = scene
    (dest / (STAGING_PREFIX + TOKEN)).symlink_to(private)
    answers = run_ops(shell, lambda ops: (ops.mkstage((str(dest), "")), ops.mv((str(dest), ""), ["secret"])))
    assert [(op, status) for op, status, _ in answers] == [("mkstage", 1), ("mv", 1), ("q", 0)]
    assert "not ours" in answers[1][2]
    assert (private / "secret").read_text() == "s3cret"
    assert not (dest / "secret").exists()


def test_a_folder_swapped_for_a_link_below_dest_is_not_entered(shell, scene):
    dest, private = scene
    (dest / "sub").symlink_to(private)
    answers = run_ops(shell, lambda ops: (ops.rm((str(dest), "sub"), ["secret"]),
                                          ops.chmod(0o777, (str(dest), "sub"), ["secret"]),
                                          ops.touch("200001010000.00", (str(dest), "sub"), ["secret"])))
    assert [(op, status) for op, status, _ in answers][:3] == [("rm", 1), ("chmod", 1), ("touch", 1)]
    assert "symlink" in answers[0][2]
    assert (private / "secret").stat().st_mode & 0o777 == 0o600
    assert (private / "secret").read_text() == "s3cret"


def test_chmod_and_touch_never_follow_a_link_in_dest(shell, scene):
    dest, private = scene
    (dest / "file").symlink_to(private / "secret")
    before = (private / "secret").stat()
    answers = run_ops(shell, lambda ops: (ops.chmod(0o666, (str(dest), ""), ["file"]),
                                          ops.touch("200001010000.00", (str(dest), ""), ["file"])))
    assert [(op, status) for op, status, _ in answers][:2] == [("chmod", 1), ("touch", 1)]
    after = (private / "secret").stat()
    assert (after.st_mode, after.st_mtime_ns) == (before.st_mode, before.st_mtime_ns)


def test_own_staging_folder_moves_by_name_only(shell, scene):
    """What the run did not send stays in the staging folder (and goes with
    it): only the names given move."""
    dest, _ = scene
    answers = run_ops(shell, lambda ops: ops.mkstage((str(dest), "")))
    assert answers[0][:2] == ("mkstage", 0)
    staging = dest / (STAGING_PREFIX + TOKEN)
    (staging / "sent").write_text("new")
    (staging / "planted").write_text("not ours")
    answers = run_ops(shell, lambda ops: (ops.mv((str(dest), ""), ["sent"]),
                                          ops.rm((str(dest), ""), [staging.name])))
    assert [(op, status) for op, status, _ in answers] == [("mv", 0), ("rm", 0), ("q", 0)]
    assert sorted(p.name for p in dest.iterdir()) == ["sent"]


def test_token_must_look_like_one(shell):
    argv, path = shell
    done = subprocess.run(argv + ["-c", SCRIPT, "sh", "ops"], input=b"$(touch /tmp/x)\n", capture_output=True,
                          env={"PATH": path}, timeout=30)
    assert done.returncode == 3 and done.stdout == b"I\0"


def test_perl_op_makes_exclusively_removes_anything_and_renames(tmp_path):
    """The one perl op (hosts with perl): mkdir fails on an existing name,
    rm takes empty folders, full ones, files and links (a missing name is
    no error), mv renames by pairs."""
    dest = tmp_path / "d"
    for folder in ("exists", "full", "empty"):
        (dest / folder).mkdir(parents=True)
    (dest / "full" / "f").write_text("x")
    (dest / "file").write_text("x")
    (dest / "link").symlink_to(tmp_path)  # a link to a folder: removed, not followed
    where = (str(dest), "")

    def build(ops):
        ops.perl("mkdir", where, ["new", "exists"])
        ops.perl("rm", where, ["full", "file", "link", "empty", "missing"])
        ops.perl("mv", where, ["new", "moved"])

    answers = run_ops((["/bin/sh"], os.environ["PATH"]), build)
    assert answers[0][:2] == ("mkdir", 1) and "cannot create directory 'exists': File exists" in answers[0][2]
    assert answers[1][:2] == ("rm", 0) and answers[2][:2] == ("mv", 0), answers
    assert sorted(os.listdir(dest)) == ["exists", "moved"] and (tmp_path / "d").is_dir()
    assert (dest / "moved").stat().st_mode & 0o777 == 0o700  # the script's umask 077


def test_perl_sink_widens_the_pipe_it_reads(tmp_path):
    """sshd hands the script its stdin as a 64 KiB pipe; the perl sink
    widens it to 1 MiB (with 64 KiB, sshd and the sink took turns on every
    16 small files: 2,000 x 4 KiB took 0.40 s on the host, 0.12 s after)."""
    dest = tmp_path / "d"
    dest.mkdir()
    stream = b"T1600000000 0 1600000000 0\nC0640 5 a\nhello\0E\n"
    ops = Ops(TOKEN)
    ops.scp((str(dest), ""), len(stream), staged=False, sink=PERL_SINK)
    head = (TOKEN + "\n").encode() + ops.take()
    ops.quit()
    read_end, write_end = os.pipe()
    try:
        assert fcntl.fcntl(write_end, fcntl.F_GETPIPE_SZ) == 65536
        with subprocess.Popen(["/bin/sh", "-c", SCRIPT, "sh", "ops"], stdin=read_end, stdout=subprocess.PIPE) as run:
            os.close(read_end)
            os.write(write_end, head + stream + ops.take())
            out = run.stdout.read()
        assert f"@@{TOKEN}@@ scp 0 0".encode() in out, out
        assert fcntl.fcntl(write_end, fcntl.F_GETPIPE_SZ) == 1 << 20
    finally:
        os.close(write_end)
    assert (dest / "a").read_bytes() == b"hello" and (dest / "a").stat().st_mode & 0o777 == 0o640
    assert (dest / "a").stat().st_mtime_ns // 1000 == 1600000000 * 10**6


def test_perl_sink_answers_every_record_and_says_why_it_stopped(tmp_path):
    """The perl sink's answers (kept, written in blocks): one per record,
    an error for a file it could not write, and its reason when it stops;
    files get their mode without a chmod, setuid and sticky bits too."""
    dest = tmp_path / "d"
    dest.mkdir()
    (dest / "taken").mkdir()  # a folder where a file is sent: that file fails
    (dest / "f0").write_text("old")  # there already (not made here): its mode is set after
    (dest / "f0").chmod(0o600)
    files = b"".join(b"T1600000000 0 1600000000 0\nC%04o 2 f%d\nhi\0" % (mode, i)
                     for i, mode in enumerate((0o640, 0o4755, 0o1444, 0o600)))

    def sink(stream: bytes) -> str:
        def build(ops):
            ops.scp((str(dest), ""), len(stream), staged=False, sink=PERL_SINK)
            ops.parts.append(stream)

        answers = run_ops((["/bin/sh"], os.environ["PATH"]), build)
        assert answers[0][:2] == ("scp", 1), answers
        return answers[0][2]

    # ready, then T, C and the file's end for each file, and why it stopped
    assert sink(files + b"T1 0 1 0\nC0644 1 taken\nx\0E\n") == "\0" * 14 + "\x01taken: Is a directory"
    for i, mode in enumerate((0o640, 0o4755, 0o1444, 0o600)):
        assert (dest / f"f{i}").read_bytes() == b"hi" and (dest / f"f{i}").stat().st_mode & 0o7777 == mode
    assert sink(b"C0644 1 ../out\nx\0E\n") == "\0\x01../out: bad name"
    assert not (tmp_path / "out").exists()


def test_perl_sink_takes_a_stream_in_frames_and_reads_no_further(tmp_path):
    """Told no length, the perl sink reads its stream in frames (8 hex
    digits of length, then the bytes), cut anywhere, records and data
    alike; after the last it reads nothing more: the next operation runs.
    A frame header that is not one ends the stream there."""
    dest = tmp_path / "d"
    dest.mkdir()
    stream = (b"D0755 0 sub\nT1600000000 0 1600000000 0\nC0640 11 a\nhello world\0E\n"
              b"T1600000001 0 1600000001 0\nC0600 3 b\nxyz\0E\n")
    cuts = [0, 3, 17, 41, 45, 46, 60, len(stream)]  # inside a record, inside data, between records
    frames = b"".join(b"%08x" % (end - start) + stream[start:end] for start, end in zip(cuts, cuts[1:]))

    def build(ops):
        ops.scp((str(dest), ""), 0, staged=False, sink=PERL_SINK)
        ops.parts.append(frames)
        ops.mkdirs((str(dest), ""), ["after"])

    answers = run_ops((["/bin/sh"], os.environ["PATH"]), build)
    assert [a[:2] for a in answers] == [("scp", 0), ("mkdirs", 0), ("q", 0)], answers
    assert answers[0][2] == "\0" * 10  # ready, D, T C data, E, T C data, E
    assert (dest / "sub/a").read_bytes() == b"hello world" and (dest / "b").read_bytes() == b"xyz"
    assert (dest / "sub/a").stat().st_mode & 0o777 == 0o640 and (dest / "b").stat().st_mtime_ns // 1000 == 1600000001 * 10**6
    assert (dest / "after").is_dir()

    other = tmp_path / "e"
    other.mkdir()

    def broken(ops):
        ops.scp((str(other), ""), 0, staged=False, sink=PERL_SINK)
        # (perl's hex() would take "0x..." for a length: the rest of a good stream)
        ops.parts.append(b"%08x" % 20 + stream[:20] + b"0x%06x" % (len(stream) - 20) + stream[20:])

    answers = run_ops((["/bin/sh"], os.environ["PATH"]), broken)
    assert answers[0][:2] == ("scp", 1), answers
    assert (other / "sub").is_dir() and not (other / "sub/a").exists() and not (other / "b").exists()


@pytest.mark.parametrize("perl", [True, False])
def test_a_folder_not_made_refuses_every_later_stream(shell, tmp_path, perl):
    """The client sends its streams right behind the ops that make the
    staging folders, before it reads their answers: once one of them failed
    (here a name already taken), the script writes nothing more of any
    stream, even into a folder it could enter, and swallows the rest."""
    dest = tmp_path / "d"
    (dest / "taken").mkdir(parents=True)
    stream = b"T1600000000 0 1600000000 0\nC0640 5 a\nhello\0E\n"

    def build(ops):
        ops.mkdirs((str(dest), ""), ["fresh"])
        ops.mkdirs((str(dest), ""), ["taken"])
        ops.scp((str(dest), ""), len(stream), staged=False, sink=PERL_SINK if perl else b"")
        ops.parts.append(stream)
        ops.mkdirs((str(dest), ""), ["after"])

    answers = run_ops(shell, build)
    assert [a[:2] for a in answers] == [("mkdirs", 0), ("mkdirs", 1), ("scp", 1)], answers
    assert (dest / "fresh").is_dir()
    assert not (dest / "a").exists() and not (dest / "after").exists()


@pytest.mark.parametrize("perl", [True, False])
def test_head_is_probed_only_for_the_scp_sink(tmp_path, perl):
    """GNU head keeps `scp -t` to its stream: the script asks which head the
    host has only when scp -t is the sink (with perl, ours reads exactly its
    stream; the probe was two programs per transfer for nothing)."""
    dest = tmp_path / "d"
    dest.mkdir()
    calls = tmp_path / "calls"
    wrappers = tmp_path / "bin"
    wrappers.mkdir()
    _logging_wrapper(wrappers, "head", calls)
    stream = b"T1600000000 0 1600000000 0\nC0640 5 a\nhello\0E\n"

    def build(ops):
        ops.scp((str(dest), ""), len(stream), staged=False, sink=PERL_SINK if perl else b"")
        ops.parts.append(stream)

    answers = run_ops((["/bin/sh"], f"{wrappers}:{os.environ['PATH']}"), build)
    assert answers[0][:2] == ("scp", 0), answers
    assert (dest / "a").read_bytes() == b"hello"
    probes = calls.read_text().splitlines() if calls.exists() else []
    assert ("head --version" in probes) is not perl, probes


def _logging_wrapper(folder: Path, name: str, calls: Path, with_args: bool = True) -> None:
    """``folder/name``: runs this machine's ``name``, first adding a line to
    ``calls`` ("name ARGS", or just "name")."""
    said = f'"{name} $*"' if with_args else name
    (folder / name).write_text(f'#!/bin/sh\necho {said} >>{calls}\nexec {shutil.which(name)} "$@"\n')
    (folder / name).chmod(0o755)


def _run_checksum(dest_lines: str, path: str) -> subprocess.CompletedProcess:
    """The script in checksum mode, as the client starts it (token, hasher,
    dests), with PATH ``path``."""
    return subprocess.run(["/bin/sh", "-c", SCRIPT, "sh", "checksum"], capture_output=True, timeout=60,
                          input=b"tok123\n" + HASHER + b"\n" + dest_lines.encode() + b"\n", env={"PATH": path})


def test_checksum_hashes_in_python3_where_the_host_has_it_with_sha256sum_s_lines(tmp_path):
    """--checksum on a host with python3: our hasher hashes every file in one
    process (no sha256sum runs) and prints exactly sha256sum -z's lines,
    which is what a host without python3 (or whose python3 fails) runs."""
    import hashlib

    dest = tmp_path / "d"
    (dest / "sub dir").mkdir(parents=True)
    files = {"plain.txt": b"x", "sub dir/it's $x; y": b"quote", "empty": b"", "big.bin": os.urandom(3 << 20),
             "\u00fcn\u00efc\u00f6d\u00e9": b"u"}
    for rel, data in files.items():
        (dest / rel).write_bytes(data)
    latin1 = os.fsencode(dest) + b"/latin1-\xe9"
    with open(latin1, "wb") as handle:
        handle.write(b"bytes")
    (dest / "link").symlink_to("plain.txt")  # not a file: no sum
    calls = tmp_path / "calls"
    spy, nopython = tmp_path / "spy", tmp_path / "nopython"
    for folder in (spy, nopython):
        folder.mkdir()
    for name in os.listdir("/usr/bin"):
        if not name.startswith("python"):
            (nopython / name).symlink_to(f"/usr/bin/{name}")
    _logging_wrapper(spy, "sha256sum", calls)

    def sums(path: str) -> set[bytes]:
        done = _run_checksum(f"d:{dest}\n", path)
        assert done.returncode == 0 and done.stderr in (b"", b"python3: cannot run\n"), done.stderr
        return {r for r in done.stdout.split(b"\0") if re.fullmatch(rb"[0-9a-f]{64}  .+", r, re.S)}

    by_python = sums(f"{spy}:{os.environ['PATH']}")
    assert calls.read_bytes() == b"sha256sum /dev/null\n"  # the fallback is known; python3 did it all
    expected = {hashlib.sha256(data).hexdigest().encode() + b"  " + os.fsencode(dest / rel) for rel, data in files.items()}
    expected.add(hashlib.sha256(b"bytes").hexdigest().encode() + b"  " + latin1)
    assert by_python == expected
    assert shutil.which("python3", path=str(nopython)) is None and shutil.which("sha256sum", path=str(nopython))
    assert sums(str(nopython)) == by_python
    # a python3 that cannot run (here: one that fails at once): the tools hash
    (spy / "python3").write_text("#!/bin/sh\necho 'python3: cannot run' >&2\nexit 1\n")
    (spy / "python3").chmod(0o755)
    assert sums(f"{spy}:{nopython}") == by_python and len(calls.read_bytes().splitlines()) > 2


def test_checksum_hashes_every_dest_in_one_python3_and_the_client_finds_each_sum(tmp_path):
    """Several dests (listed as records, and as entries where a mapping names
    an owner): one python3 hashes them all, after the last, and the parsed
    listing has every sum where planning looks for it."""
    import hashlib

    from synctasks.listing import parse_listing

    (tmp_path / "owned").mkdir()
    (tmp_path / "plain").mkdir()
    (tmp_path / "owned/a.txt").write_text("a")
    (tmp_path / "plain/b.txt").write_text("b")
    (tmp_path / "one.txt").write_text("c")
    calls = tmp_path / "calls"
    spy = tmp_path / "spy"
    spy.mkdir()
    _logging_wrapper(spy, "python3", calls, with_args=False)  # (its arguments: the hasher's code)
    done = _run_checksum(f"D:{tmp_path}/owned\nd:{tmp_path}/plain\nf:{tmp_path}/one.txt\n", f"{spy}:{os.environ['PATH']}")
    assert done.returncode == 0, done.stderr
    assert calls.read_text() == "python3\n"
    listing = parse_listing(done.stdout)
    assert set(listing.records) == {f"{tmp_path}/plain", f"{tmp_path}/one.txt"}
    assert listing.entries[f"{tmp_path}/owned"][f"{tmp_path}/owned/a.txt"].sha256 == hashlib.sha256(b"a").hexdigest()
    for path, data in (("plain/b.txt", b"b"), ("one.txt", b"c")):
        assert listing.sum_of(f"{tmp_path}/{path}") == hashlib.sha256(data).hexdigest()


def test_listing_is_written_a_mebibyte_at_a_time_where_stdbuf_runs_and_whole_without_it(tmp_path):
    """GNU find writes its listing through stdbuf -o1M (full SSH packets);
    a host without stdbuf, or whose stdbuf cannot preload (exit 125), lists
    the same entries."""
    from synctasks.listing import parse_listing

    dest = tmp_path / "d"
    for i in range(300):
        (dest / f"sub{i % 7}").mkdir(parents=True, exist_ok=True)
        (dest / f"sub{i % 7}/file {i}").write_text("x" * i)
    calls = tmp_path / "calls"
    spy, nostdbuf, broken = tmp_path / "spy", tmp_path / "nostdbuf", tmp_path / "broken"
    for folder in (spy, nostdbuf, broken):
        folder.mkdir()
    for name in os.listdir("/usr/bin"):
        if name != "stdbuf":
            (nostdbuf / name).symlink_to(f"/usr/bin/{name}")
    _logging_wrapper(spy, "stdbuf", calls)
    (broken / "stdbuf").write_text("#!/bin/sh\necho 'stdbuf: failed to find libstdbuf.so' >&2\nexit 125\n")
    (broken / "stdbuf").chmod(0o755)

    def records(path: str) -> set[bytes]:
        done = subprocess.run(["/bin/sh", "-c", SCRIPT, "sh", "list"], capture_output=True, timeout=60,
                              input=f"tok123\nd:{dest}\n\n".encode(), env={"PATH": path})
        assert done.returncode == 0
        return parse_listing(done.stdout).records[str(dest)]

    through_stdbuf = records(f"{spy}:{os.environ['PATH']}")
    assert calls.read_text().startswith(f"stdbuf -o1M find -H {dest} ")
    assert len(through_stdbuf) == 308
    assert shutil.which("stdbuf", path=str(nostdbuf)) is None
    assert records(str(nostdbuf)) == through_stdbuf
    assert records(f"{broken}:{nostdbuf}") == through_stdbuf


@pytest.mark.parametrize("name, expected", [("web-01.example", "web_01.example"), ("host 1+\u00fc", "host_1___")])
def test_staging_names_carry_the_host_name_made_safe(shell, name, expected):
    """The staging folder's name holds the host's name (read without a
    program where /proc has it): every byte but [A-Za-z0-9.] becomes "_"
    (a "-" would break the name's PID field apart)."""
    argv, path = shell
    unshare = ["unshare", "--uts"] if os.geteuid() == 0 else ["unshare", "--map-root-user", "--uts"]
    done = subprocess.run(unshare + ["sh", "-c", 'printf %s "$0" >/proc/sys/kernel/hostname && exec "$@"', name, *argv, "-c", SCRIPT, "sh",
                                     "list"], input=b"tok123\n\n", capture_output=True, env={"PATH": path},
                          timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split(b"\0")[1].decode() == f"T{expected}-{done.stdout.split(b'-')[-2].decode()}-tok123"
