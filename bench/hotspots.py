"""Where synctasks spends its time in one case: client profile and remote processes.

    .venv/bin/python bench/hotspots.py changes --folders 2000      # one changed file in each of 2,000 folders
    .venv/bin/python bench/hotspots.py noop --files 50000           # no-op of a 50,000-file tree
    .venv/bin/python bench/hotspots.py noop --files 50000 --hosts 4 --only time,pyspy

For the scenario it prepares (same server and tmpfs data as bench/run.py),
it runs `synctasks sync` (or `fab sync` with --entry fab) several times:

* time    wall time of the entry and of `rsync -a` on the same change, plus
          a raw `ssh host find dest -printf ...` listing (the listing's floor);
* strace  the server's sshd traced with `strace -f` (execve, process
          creation, read): the remote programs run per run and per changed
          folder, and each one's read(2) calls (byte-at-a-time readers);
* pyspy   py-spy samples of the client, every thread, twice: wall clock
          (--idle: waiting included) and on-CPU only; the report shows, per
          thread, the time in each phase and the hottest functions.

Each run gets a fresh change (changes) or is a true no-op (noop).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # noqa: E402

PY_SPY = bench.BIN / "py-spy"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenario", choices=("changes", "noop", "first"))
    parser.add_argument("--folders", type=int, default=2000, help="changes: folders of 10 files (default 2,000)")
    parser.add_argument("--files", type=int, default=50_000, help="noop, first: files of 1 KiB, 100 per folder")
    parser.add_argument("--hosts", type=int, default=1)
    parser.add_argument("--entry", choices=("cli", "fab"), default="cli")
    parser.add_argument("--only", default="time,strace,pyspy", help="instruments, comma-separated")
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--out", default=str(bench.ROOT / "bench" / "profiles"), help="where py-spy output goes")
    args = parser.parse_args()
    instruments = args.only.split(",")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    work = Path("/dev/shm") / f"synctasks-profile-{os.getpid()}"
    work.mkdir(parents=True)
    os.chmod(work, 0o755)
    try:
        with bench.TestServer(work / "server", addresses=bench.HOSTS) as server:
            watch_server(server)
            b = bench.Bench(work, server, 1, [args.entry], dict(bench.FULL))
            hosts = bench.HOSTS[:args.hosts]
            if args.scenario == "changes":
                src = b.tree("changes", args.folders * 10, args.folders, 4096)
            else:
                src = b.tree("tree", args.files, max(1, args.files // 100), 1024)
            dests = {h: b.dest(h, f"{args.scenario}-ours") for h in hosts}
            ref = {h: b.dest(h, f"{args.scenario}-rsync") for h in hosts}
            for h in hosts:
                b.copy_tree(src, dests[h])
                b.copy_tree(src, ref[h])
            mapping = {h: [{"src": str(src), "dest": str(dests[h])}] for h in hosts}
            folders = sorted(src.iterdir())
            counter = [0]

            def prepare() -> None:
                """A fresh change (changes); empty dests (first); nothing (noop)."""
                if args.scenario == "first":
                    b.clear(*dests.values(), *ref.values())
                if args.scenario != "changes":
                    return
                counter[0] += 1
                stamp = time.time() + 100 + counter[0]
                for folder in folders:
                    path = folder / f"file{counter[0] % 10:05d}.bin"
                    path.write_bytes(os.urandom(4096))
                    os.utime(path, (stamp, stamp))

            def ours() -> tuple[float, int]:
                return b.synctasks(args.entry, mapping, rss=True)

            print(f"scenario {args.scenario}: {sum(1 for _ in src.rglob('*'))} entries, {len(folders)} folders, "
                  f"{len(hosts)} host(s), entry {args.entry}, load {os.getloadavg()[0]:.2f}", flush=True)
            ours()  # warm up (and a no-op starts from a synced dest)
            if "time" in instruments:
                for _ in range(2):
                    prepare()
                    remote = server_cpu(server)
                    seconds, rss = ours()
                    remote = server_cpu(server) - remote
                    usage = b.last_usage
                    theirs = server_cpu(server)
                    ref_s = b.rsyncs([(src, h, ref[h]) for h in hosts])
                    theirs = server_cpu(server) - theirs
                    print(f"time: synctasks {seconds:.3f}s wall, client CPU {usage.ru_utime:.2f}s user + "
                          f"{usage.ru_stime:.2f}s sys, server-side CPU {remote:.2f}s, peak RSS {rss / 1024:.0f} MiB"
                          f" | rsync -a {ref_s:.3f}s wall, server-side CPU {theirs:.2f}s", flush=True)
                raw_listing(b, hosts[0], dests[hosts[0]])
            if "strace" in instruments:
                prepare()
                count_remote(b, server, ours, len(folders))
            if "pyspy" in instruments and not PY_SPY.exists():
                print(f"pyspy: {PY_SPY} is missing: .venv/bin/pip install py-spy")
            elif "pyspy" in instruments:
                for idle in (True, False):
                    prepare()
                    name = out / f"{args.scenario}-{args.entry}-{'wall' if idle else 'cpu'}.txt"
                    pyspy(b, args.entry, mapping, name, idle, args.rate)
            return 0
    finally:
        subprocess.run(["rm", "-rf", str(work)])
        try:
            CGROUP.rmdir()
        except OSError:
            pass


CGROUP = Path("/sys/fs/cgroup/cpuacct") / f"synctasks-profile-{os.getpid()}"


def watch_server(server) -> None:
    """Put the sshd listener in a cpuacct cgroup of its own: every process it
    starts (sessions, shells, the programs they run) is counted there, even
    one orphaned when its session ends. Falls back to the listener's cutime."""
    try:
        CGROUP.mkdir()
        (CGROUP / "tasks").write_text(str(server.process.pid))
    except OSError:
        pass


def server_cpu(server) -> float:
    """CPU seconds used by the server side so far (cgroup), or by every
    reaped process below the sshd listener (cutime + cstime)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(bench._descendants(server.process.pid)) > 1:
        time.sleep(0.05)
    try:
        return int((CGROUP / "cpuacct.usage").read_text()) / 1e9
    except OSError:
        fields = Path(f"/proc/{server.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


def raw_listing(b: bench.Bench, host: str, dest: Path) -> None:
    """The floor for learning the remote state: one ssh, GNU find -printf,
    output discarded; with names (%u %g, as synctasks asks), numeric ids, or neither."""
    formats = {"as synctasks (%u %g names)": r"%y %m %s %T@ %p\0%l\0%u\0%g\0",
               "numeric ids (%U %G)": r"%y %m %s %T@ %p\0%l\0%U\0%G\0",
               "relative, no owner (%P)": r"%y %m %s %T@ %P\0%l\0"}
    base = ["ssh", *b.ssh_options(b.server.port), f"{b.server.user}@{host}"]
    print(f"time: `ssh true` {b._timed([base + ['true']]):.3f}s", flush=True)
    for label, fmt in formats.items():
        started = time.perf_counter()
        done = subprocess.run(base + [f"find {dest} -printf '{fmt}'"], capture_output=True)
        seconds = time.perf_counter() - started
        print(f"time: raw `ssh find -printf` listing, {label}: {seconds:.3f}s ({len(done.stdout) / 1e6:.1f} MB)",
              flush=True)


def count_remote(b: bench.Bench, server, run, folders: int) -> None:
    """Every program the server runs during one sync, and the read(2) calls of
    each (strace -f on the sshd listener): byte-at-a-time readers show up."""
    trace = b.work / "strace.txt"
    tracer = subprocess.Popen(["strace", "-f", "-qq", "-s", "0", "-o", str(trace),
                               "-e", "trace=execve,clone,clone3,fork,vfork,read", "-p", str(server.process.pid)],
                              stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # attached
    seconds, _ = run()
    time.sleep(0.5)
    tracer.send_signal(signal.SIGINT)
    tracer.wait()
    execs: collections.Counter = collections.Counter()
    program: dict[str, str] = {}
    reads: collections.Counter = collections.Counter()
    read_bytes: collections.Counter = collections.Counter()
    forks = 0
    for line in trace.read_text(errors="replace").splitlines():
        match = re.match(r"(\d+)\s+execve\(\"([^\"]+)\"", line)
        if match and "= -1" not in line:
            program[match.group(1)] = name = os.path.basename(match.group(2))
            execs[name] += 1
            continue
        match = re.match(r"(\d+)\s+read\(\d+, .*\)\s+=\s+(\d+)", line)
        if match:
            reads[match.group(1)] += 1
            read_bytes[match.group(1)] += int(match.group(2))
        elif re.match(r"\d+\s+(clone3?|v?fork)\(", line) and "CLONE_THREAD" not in line:
            forks += 1
    total = sum(execs.values())
    print(f"strace: one sync ({seconds:.2f}s traced) ran {total} programs on the server and made {forks} "
          f"processes (fork/clone); per folder with a change: {total / folders:.2f} execs, {forks / folders:.2f} forks")
    print("strace: programs: " + ", ".join(f"{name} {count}" for name, count in execs.most_common()), flush=True)
    calls: collections.Counter = collections.Counter()
    volume: collections.Counter = collections.Counter()
    for pid, count in reads.items():
        name = program.get(pid, "(no exec: sshd or a subshell)")
        calls[name] += count
        volume[name] += read_bytes[pid]
    print(f"strace: read(2) calls on the server: {sum(calls.values()):,}; by program: " + ", ".join(
        f"{name} {count:,} ({volume[name] / max(count, 1):.0f} B each)" for name, count in calls.most_common(6)),
        flush=True)


def pyspy(b: bench.Bench, entry: str, mapping: dict, name: Path, idle: bool, rate: int) -> None:
    """Sample the whole client process (every thread) with py-spy; summarise."""
    config = b.write_project(mapping)
    argv = [str(PY_SPY), "record", "-r", str(rate), "-f", "raw", "--threads", "-o", str(name), "--nonblocking",
            *(["--idle"] if idle else []), "--", *b.argv(entry, config)]
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, cwd=bench.ROOT)
    seconds = time.perf_counter() - started
    if done.returncode:
        print(done.stderr[-2000:])
        return
    print(f"\npy-spy ({'wall clock, waiting included' if idle else 'on CPU only'}), {seconds:.2f}s under py-spy, "
          f"{rate}/s: {name}")
    summarise(name, rate)


PHASES = [  # (label, function names marking the phase; the innermost match wins). Old and new engine names.
    ("start-up: imports", ("_find_and_load",)),
    ("connect + auth", ("open_connection", "build_connection", "connect", "auth_publickey", "start_client")),
    ("local walk", ("prefetch", "walk", "_walk", "scan")),
    ("read listing (channel)", ("read_listing",)),
    ("parse listing", ("parse_listing",)),
    ("plan", ("plan_host",)),
    ("prepare (staging folders)", ("_apply", "prepare")),
    ("send SCP streams", ("send_scp", "scp_records", "_send_groups", "transfer")),
    ("  of which: window full", ("_wait_for_send_window",)),
    ("read SCP answers", ("read_scp_answers",)),
    ("commit (moves, markers)", ("_commit", "commit")),
    ("results / report", ("to_dict", "print_summary", "on_result")),
]


def summarise(path: Path, rate: int, top: int = 12) -> None:
    threads: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    phases: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    selfs: collections.Counter = collections.Counter()
    inclusive: collections.Counter = collections.Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        # --threads: "process ...;thread (0x...)" come first
        thread = next((f for f in frames[:3] if f.startswith("thread")), "?")
        kind = classify(frames)
        threads[kind][thread] += n
        funcs = [f.split(" (")[0].split(".")[-1] for f in frames if " (" in f and not f.startswith(("process", "thread"))]
        phase = "other"
        for label, names in PHASES:
            if any(f in names for f in funcs):
                phase = label
        phases[kind][phase] += n
        if funcs:
            leaf = frames[-1]
            selfs[f"{kind}: {shorten(leaf)}"] += n
            for func in set(shorten(f) for f in frames if " (" in f and not f.startswith(("process", "thread"))):
                inclusive[f"{kind}: {func}"] += n
        total += n
    print(f"  {total} samples = {total / rate:.2f}s of thread time")
    for kind in sorted(phases, key=lambda k: -sum(phases[k].values())):
        seconds = sum(phases[kind].values()) / rate
        print(f"  thread {kind}: {seconds:.2f}s in {len(threads[kind])} thread(s)")
        for phase, n in phases[kind].most_common():
            print(f"      {phase:<26} {n / rate:6.2f}s")
    print("  hottest leaf frames (self time):")
    for func, n in selfs.most_common(top):
        print(f"      {n / rate:6.2f}s  {func}")
    print("  hottest functions (inclusive):")
    for func, n in inclusive.most_common(top + 8):
        print(f"      {n / rate:6.2f}s  {func}")


def classify(frames: list[str]) -> str:
    text = ";".join(frames)
    if "transport.py" in text and "run (paramiko" in text:
        return "paramiko transport"
    if "_worker (concurrent" in text or "ThreadPoolExecutor" in text:
        return "pool worker"
    if "prefetch" in text or "_walk" in text:
        return "walker"
    if frames and "<module>" in text and ("main (synctasks" in text or "run_sync" in text or "<module> (" in text):
        return "main"
    return "other"


def shorten(frame: str) -> str:
    """'read_until (synctasks/transfer.py:96)' -> 'read_until (transfer.py)'."""
    match = re.match(r"(.*?) \((.*?)(?::\d+)?\)$", frame)
    if not match:
        return frame
    func, where = match.groups()
    return f"{func} ({'/'.join(where.split('/')[-2:])})"


if __name__ == "__main__":
    sys.exit(main())
