"""Benchmarks: synctasks beside rsync, scp and pssh, measured in one run.

    bash scripts/bench.sh                    # every case, 3 rounds each (~10 min on 2 quiet cores)
    bash scripts/bench.sh --quick            # small sizes, 1 round: a smoke test (~1 min)
    bash scripts/bench.sh --case changes     # one case (or a comma-separated list)
    bash scripts/bench.sh --list             # the cases
    bash scripts/bench.sh --entry fab        # only `fab sync` (default: `fab sync` and `synctasks sync`)
    bash scripts/bench.sh --cli-rounds 3     # `synctasks sync` every round too (default: in the first only)

Starts the same throwaway sshd the tests use (16 loopback addresses, one
port), makes the data sets on tmpfs (/dev/shm: source and destinations),
and runs each tool as a whole process (Python start-up included). Within a
case the tools alternate, round after round, and the first tool of a round
rotates, so a noisy moment hits every tool alike. For every tool the
table shows min / median / max; the ratio is of medians, synctasks / the
reference; targets (issue 10) are judged on `fab sync`, the design card's
entry; `synctasks sync` (the console script) is shown beside it (by
default measured in the first round only, to keep the run near 10 minutes).

Beside them each case times `fab version` (Python, the imports of Fabric,
Invoke and paramiko, our fabfile, a task that prints one line) in turn:
every `fab sync` pays it besides synctasks' own work. After the table,
each judged `fab sync` ratio is printed again less that case's median.

Peak RSS is the synctasks process's own, as GNU time reports it (%M). Not
os.wait4's rusage of our own child: Linux carries the spawning process's
peak RSS over exec into the child's (this harness grows past 160 MiB in a
full run, which every child would then show).

Every tool gets its own destination (all loopback "hosts" share one file
system), except in no-op cases, where `fab sync` and `synctasks sync` share
theirs (a no-op changes nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import stat
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from testing.testproxy import TcpProxy  # noqa: E402
from testing.testserver import TestServer, _descendants, loopback_addresses  # noqa: E402

BIN = Path(sys.executable).parent
TIME = "/usr/bin/time"  #: GNU time (Debian package time): a child's own peak RSS
HOSTS = loopback_addresses(16)
MiB = 1 << 20

# Sizes of the full run and of --quick.
FULL = dict(small=2000, small_folders=20, big_mib=512, change_folders=2000, change_files=10,
            tree_files=100_000, tree_folders=1000, tree_size=1024, many_files=500, many_size=8192,
            rss_files=20_000, rss_size=4096, rss_tree=100_000)
QUICK = dict(small=200, small_folders=20, big_mib=16, change_folders=100, change_files=10,
             tree_files=2000, tree_folders=20, tree_size=1024, many_files=50, many_size=8192,
             rss_files=1000, rss_size=4096, rss_tree=2000)


# --------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------
@dataclass
class Tool:
    """One contestant of a case: ``run`` returns its wall seconds."""

    name: str
    run: Callable[[], float]
    before: Callable[[], None] | None = None  #: untimed, before each run (clear its dest)
    times: list[float] = field(default_factory=list)
    rounds: int | None = None  #: runs at most this many rounds (the first ones); None: every round


@dataclass
class Row:
    case: str
    tool: str
    ours: list[float]
    reference: str
    theirs: list[float]
    target: float | None  #: None: reported, not judged
    unit: str = "s"
    #: `fab version` in the same case, alternating with the others (fab sync rows)
    start: list[float] = field(default_factory=list)

    @property
    def ratio(self) -> float | None:
        if not self.theirs:
            return None
        return statistics.median(self.ours) / statistics.median(self.theirs)

    @property
    def verdict(self) -> str:
        if self.target is None:
            return "-"
        value = self.ratio if self.theirs else statistics.median(self.ours)
        return "PASS" if value <= self.target else "MISS"


def spread(values: list[float], unit: str = "s") -> str:
    if unit == "MiB":
        return f"{statistics.median(values):.0f} MiB"
    lo, med, hi = min(values), statistics.median(values), max(values)
    if len(values) == 1:
        return f"{med:.3f}s"
    return f"{med:.3f}s [{lo:.3f}-{hi:.3f}]"


def alternate(tools: list[Tool], rounds: int, each_round: Callable[[int], None] | None = None) -> None:
    """Run every tool once per round; the first tool rotates round by round."""
    for r in range(rounds):
        if each_round:
            each_round(r)
        for i in range(len(tools)):
            tool = tools[(i + r) % len(tools)]
            if tool.rounds is not None and len(tool.times) >= tool.rounds:
                continue
            if tool.before:
                tool.before()
            tool.times.append(tool.run())


class Bench:
    def __init__(self, work: Path, server: TestServer, rounds: int, entries: list[str], sizes: dict):
        self.work = work
        self.server = server
        self.rounds = rounds
        self.entries = entries  #: "fab" and/or "cli"
        self.sizes = sizes
        self.project = work / "project"
        (self.project / "hosts").mkdir(parents=True)
        self.known_hosts = work / "known_hosts"
        server.write_known_hosts(self.known_hosts)
        self.remote = server.make_writable_dir(work / "remote")
        self.rows: list[Row] = []
        self.start: Tool | None = None  #: `fab version`, timed in the case that runs
        self.cli_rounds: int | None = None  #: rounds of `synctasks sync` beside `fab sync` (None: all)
        self.one_host: dict[str, float] = {}  #: entry -> median 1-host first sync time (small case)
        self._data: dict[str, Path] = {}

    # -- data ------------------------------------------------------------
    def tree(self, name: str, files: int, folders: int, size: int) -> Path:
        """``files`` random files of ``size`` bytes spread over ``folders`` folders (made once)."""
        key = f"{name}-{files}-{folders}-{size}"
        if key in self._data:
            return self._data[key]
        started = time.perf_counter()
        src = self.work / "data" / key
        per = -(-files // folders)
        for i in range(files):
            folder = src / f"dir{i // per:04d}"
            if i % per == 0:
                folder.mkdir(parents=True)
            (folder / f"file{i % per:05d}.bin").write_bytes(os.urandom(size))
        self._data[key] = src
        print(f"  (made {files:,} x {size} B in {folders:,} folders in {time.perf_counter() - started:.1f}s)",
              flush=True)
        return src

    def make_big(self, size: int) -> Path:
        src = self.work / "data" / "big.bin"
        src.parent.mkdir(parents=True, exist_ok=True)
        chunk = os.urandom(MiB)
        with open(src, "wb") as handle:
            for _ in range(size // MiB):
                handle.write(chunk)
        return src

    def dest(self, host: str, name: str) -> Path:
        self.server.make_writable_dir(self.remote / host)
        return self.remote / host / name

    def copy_tree(self, src: Path, dest: Path) -> None:
        """A byte- and metadata-identical copy (cp -a), owned by the login user."""
        self.clear(dest)
        subprocess.run(["cp", "-a", str(src), str(dest)], check=True)
        if os.geteuid() == 0:
            subprocess.run(["chown", "-R", f"{self.server.user}:", str(dest)], check=True)

    @staticmethod
    def verify(src: Path, *dests: Path, meta: bool = True) -> None:
        """Every dest holds exactly src (contents; with ``meta`` also file modes and
        whole-second mtimes), or the run stops: a fast wrong run must not pass."""

        def files(root: Path) -> set:
            found = set()
            for p in root.rglob("*"):
                info = p.lstat()
                if stat.S_ISREG(info.st_mode):
                    found.add((p.relative_to(root), info.st_mode, int(info.st_mtime)))
            return found

        mine = files(src) if meta else set()
        for dest in dests:
            done = subprocess.run(["diff", "-rq", "--no-dereference", str(src), str(dest)], capture_output=True,
                                  text=True)
            if done.returncode:
                raise SystemExit(f"{dest} differs from {src}:\n{(done.stdout + done.stderr)[:2000]}")
            missing = mine - files(dest) if meta else set()
            if missing:
                raise SystemExit(f"{dest}: {len(missing)} files without the mode or mtime of src, e.g. "
                                 f"{sorted(missing)[:3]}")

    @staticmethod
    def clear(*paths: Path) -> None:
        for path in paths:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()

    # -- synctasks -------------------------------------------------------
    def write_project(self, mappings: dict[str, list[dict]], address_port: dict[str, int] | None = None) -> Path:
        """connection_info.json, hosts/*.json and config.ini for ``mappings``; the config's path."""
        entries = []
        for address in mappings:
            record = self.server.connection_entry(address)
            record["port"] = (address_port or {}).get(address, self.server.port)
            entries.append(record)
        (self.project / "connection_info.json").write_text(json.dumps(entries))
        os.chmod(self.project / "connection_info.json", 0o600)
        for old in (self.project / "hosts").glob("*.json"):
            old.unlink()
        for address, maps in mappings.items():
            (self.project / "hosts" / f"{address}.json").write_text(json.dumps(maps))
        config = self.project / "config.ini"
        config.write_text(
            f"[sync]\nconnections = {max(4, len(mappings))}\nretries = 0\n[logging]\nlevel = INFO\n"
            f"[security]\nknown_hosts = {self.known_hosts}\n")
        return config

    def argv(self, entry: str, config: Path, flags: tuple[str, ...] = ()) -> list[str]:
        """`fab sync` (entry "fab", run in the folder of fabfile.py, as users
        run it) or the console script `synctasks sync` ("cli")."""
        program = "fab" if entry == "fab" else "synctasks"
        return [str(BIN / program), "sync", "--quiet", "--config", str(config), *flags]

    def synctasks(self, entry: str, mappings: dict[str, list[dict]], address_port: dict[str, int] | None = None,
                  flags: tuple[str, ...] = (), rss: bool = False) -> tuple[float, int]:
        """Run the whole synctasks process; (seconds, peak RSS KiB: with
        ``rss`` measured by GNU time, else 0)."""
        argv = self.argv(entry, self.write_project(mappings, address_port), flags)
        peak = 0
        # stderr goes to a file: a pipe read only after the wait would
        # block a run that writes more than a pipe holds.
        with tempfile.TemporaryFile() as errors, tempfile.NamedTemporaryFile("r") as rss_out:
            if rss:
                argv = [TIME, "-f", "%M", "-o", rss_out.name, *argv]
            started = time.perf_counter()
            process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=errors, cwd=ROOT)
            _, status, usage = os.wait4(process.pid, 0)
            seconds = time.perf_counter() - started
            process.returncode = os.waitstatus_to_exitcode(status)
            if process.returncode != 0:
                errors.seek(0)
                raise SystemExit(f"{argv[0]} sync failed: {errors.read().decode(errors='replace')[-4000:]}")
            if rss:
                peak = int(rss_out.read().split()[-1])
        self.last_usage = usage
        return seconds, peak

    def ours(self, mappings_of: Callable[[str], dict[str, list[dict]]], before: Callable[[str], None] | None = None,
             address_port: dict[str, int] | None = None, flags: tuple[str, ...] = ()) -> list[Tool]:
        """A Tool per entry; ``mappings_of(entry)`` gives that entry's mappings."""
        label = {"fab": "fab sync", "cli": "synctasks sync"}
        tools = [Tool(label[e], (lambda e=e: self.synctasks(e, mappings_of(e), address_port, flags)[0]),
                      (lambda e=e: before(e)) if before else None,
                      rounds=self.cli_rounds if e == "cli" and "fab" in self.entries else None)
                 for e in self.entries]
        if "fab" in self.entries:
            # Fabric's start, in turn with the others: what every `fab sync`
            # spends besides synctasks' own work (see print_less_start)
            self.start = Tool("fab version", lambda: self._timed([[str(BIN / "fab"), "version"]], cwd=ROOT))
            tools.append(self.start)
        return tools

    # -- reference tools -------------------------------------------------
    def ssh_options(self, port: int) -> list[str]:
        return ["-i", str(self.server.client_key), "-o", f"UserKnownHostsFile={self.known_hosts}",
                "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", *(["-p", str(port)] if port else [])]

    def rsync_argv(self, src: Path, address: str, dest: Path, port: int | None = None,
                   flags: tuple[str, ...] = ("-a",)) -> list[str]:
        ssh = " ".join(["ssh", *self.ssh_options(port or self.server.port)])
        return ["rsync", *flags, "-e", ssh, f"{src}/", f"{self.server.user}@{address}:{dest}/"]

    def rsync(self, src: Path, address: str, dest: Path, port: int | None = None,
              flags: tuple[str, ...] = ("-a",)) -> float:
        return self._timed([self.rsync_argv(src, address, dest, port, flags)])

    def rsyncs(self, pairs: list[tuple[Path, str, Path]], flags: tuple[str, ...] = ("-a",)) -> float:
        """One rsync per (src, host, dest), all at once; seconds until the last ends."""
        return self._timed([self.rsync_argv(s, h, d, flags=flags) for s, h, d in pairs])

    def scp(self, src: Path, address: str, dest: Path) -> float:
        # scp spells the port -P (its -p preserves times and modes).
        argv = ["scp", "-O", "-p", "-q", "-P", str(self.server.port), *self.ssh_options(0),
                str(src), f"{self.server.user}@{address}:{dest}"]
        return self._timed([argv])

    @staticmethod
    def _timed(argvs: list[list[str]], **popen) -> float:
        started = time.perf_counter()
        processes = [subprocess.Popen(a, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **popen) for a in argvs]
        errors = [(a[0], p.communicate()[1], p.returncode) for a, p in zip(argvs, processes)]
        seconds = time.perf_counter() - started
        for program, err, code in errors:
            if code:
                raise SystemExit(f"{program} failed ({code}): {err.decode(errors='replace')}")
        return seconds

    # -- results ---------------------------------------------------------
    def report(self, case: str, tools: list[Tool], reference: Tool | list[float], ref_name: str,
               target: float | None) -> None:
        """Rows (fab and cli against the reference) and their printout."""
        theirs = reference if isinstance(reference, list) else reference.times
        print(f"  {ref_name:<16} {spread(theirs)}", flush=True)
        start = self.start.times if self.start is not None else []
        if start:
            print(f"  {self.start.name:<16} {spread(start)}", flush=True)
        for tool in tools:
            if tool is self.start:
                continue
            judged = target if tool.name == "fab sync" or "fab" not in self.entries else None
            row = Row(case, tool.name, tool.times, ref_name, theirs, judged,
                      start=start if tool.name == "fab sync" else [])
            self.rows.append(row)
            goal = f"target <= {target}: {row.verdict}" if judged is not None else "reported"
            print(f"  {tool.name:<16} {spread(tool.times)}  ratio {row.ratio:.2f} ({goal})", flush=True)


# --------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------
def first_sync_tools(b: Bench, src: Path, host: str, name: str, port: int | None = None) -> tuple[list[Tool], Tool]:
    """Each entry and rsync -a syncing ``src`` from scratch into its own dest."""
    dests = {e: b.dest(host, f"{name}-{e}") for e in b.entries}
    ref_dest = b.dest(host, f"{name}-rsync")
    tools = b.ours(lambda e: {host: [{"src": str(src), "dest": str(dests[e])}]}, lambda e: b.clear(dests[e]),
                   {host: port} if port else None)
    reference = Tool("rsync -a", lambda: b.rsync(src, host, ref_dest, port=port), lambda: b.clear(ref_dest))
    return tools, reference


def case_small(b: Bench) -> None:
    s = b.sizes
    src = b.tree("small", s["small"], s["small_folders"], 4096)
    tools, ref = first_sync_tools(b, src, HOSTS[0], "small")
    alternate(tools + [ref], b.rounds)
    b.verify(src, *b.remote.joinpath(HOSTS[0]).glob("small-*"))
    b.report(f"{s['small']:,} x 4 KiB, first sync, 1 host", tools, ref, "rsync -a", 1.0)
    for tool in tools:
        b.one_host[tool.name] = statistics.median(tool.times)


def case_latency(b: Bench) -> None:
    s = b.sizes
    src = b.tree("small", s["small"], s["small_folders"], 4096)
    host = HOSTS[1]
    with TcpProxy((host, b.server.port), delay=0.010, listen=(host, 0)) as proxy:
        with open(b.known_hosts, "a") as handle:
            handle.write(f"[{host}]:{proxy.port} {b.server.host_key_line}\n")
        tools, ref = first_sync_tools(b, src, host, "latency", proxy.port)
        alternate(tools + [ref], b.rounds)
    b.report("same, 20 ms round trip (proxy)", tools, ref, "rsync -a", 1.2)


def case_big(b: Bench) -> None:
    size = b.sizes["big_mib"] * MiB
    src = b.make_big(size)
    host = HOSTS[3]
    dests = {e: b.dest(host, f"big-{e}.bin") for e in b.entries}
    ref_dest = b.dest(host, "big-scp.bin")
    tools = b.ours(lambda e: {host: [{"src": str(src), "dest": str(dests[e])}]}, lambda e: b.clear(dests[e]))
    ref = Tool("scp -O", lambda: b.scp(src, host, ref_dest), lambda: b.clear(ref_dest))
    alternate(tools + [ref], b.rounds)
    b.report(f"one {size // MiB} MiB file, first sync", tools, ref, "scp -O", 1.1)
    b.clear(src, ref_dest, *dests.values())


def case_noop(b: Bench) -> None:
    s = b.sizes
    src = b.tree("small", s["small"], s["small_folders"], 4096)
    host = HOSTS[2]
    dest, ref_dest = b.dest(host, "noop-ours"), b.dest(host, "noop-rsync")
    mapping = {host: [{"src": str(src), "dest": str(dest)}]}
    b.synctasks(b.entries[0], mapping)
    b.rsync(src, host, ref_dest)
    tools = b.ours(lambda e: mapping)
    ref = Tool("rsync -a", lambda: b.rsync(src, host, ref_dest))
    alternate(tools + [ref], b.rounds)
    b.report(f"no-op re-sync of the {s['small']:,} files", tools, ref, "rsync -a no-op", 1.2)


def case_eight(b: Bench) -> None:
    s = b.sizes
    src = b.tree("small", s["small"], s["small_folders"], 4096)
    if not b.one_host:
        case_small(b)
    hosts = HOSTS[:8]
    dests = {(e, h): b.dest(h, f"eight-{e}") for e in b.entries for h in hosts}
    tools = b.ours(lambda e: {h: [{"src": str(src), "dest": str(dests[e, h])}] for h in hosts},
                   lambda e: b.clear(*(d for (x, _), d in dests.items() if x == e)))
    # (against 8 x the 1-host time, which holds 8 starts: Fabric's is not taken off)
    tools, b.start = [t for t in tools if t is not b.start], None
    alternate(tools, b.rounds)
    for tool in tools:
        b.report(f"{s['small']:,} files to 8 hosts at once", [tool], [8 * b.one_host[tool.name]],
                 "8 x 1-host time", 0.5)
    b.clear(*dests.values())


def case_changes(b: Bench) -> None:
    """2,000 existing folders x 10 files; each round changes one file in every folder."""
    s = b.sizes
    folders, per = s["change_folders"], s["change_files"]
    src = b.tree("changes", folders * per, folders, 4096)
    host = HOSTS[4]
    dests = {e: b.dest(host, f"changes-{e}") for e in b.entries}
    ref_dest = b.dest(host, "changes-rsync")
    for dest in (*dests.values(), ref_dest):  # the existing folders
        b.copy_tree(src, dest)
    folder_list = sorted(src.iterdir())
    stamp = [time.time() + 10]

    tools = b.ours(lambda e: {host: [{"src": str(src), "dest": str(dests[e])}]})
    ref = Tool("rsync -a", lambda: b.rsync(src, host, ref_dest))

    def change(r: int) -> None:
        # A tool that ran fewer rounds is checked before its dest falls behind.
        for tool, entry in zip(tools, b.entries):
            if tool.rounds is not None and r == tool.rounds:
                b.verify(src, dests[entry])
        stamp[0] += 1
        for folder in folder_list:
            path = folder / f"file{r % per:05d}.bin"
            path.write_bytes(os.urandom(4096))
            os.utime(path, (stamp[0], stamp[0]))

    # Each round changes the source once; every tool then carries the same change.
    alternate(tools + [ref], b.rounds, change)
    b.verify(src, ref_dest, *(dests[e] for t, e in zip(tools, b.entries) if len(t.times) == b.rounds))
    b.report(f"{folders:,} existing folders x {per} files, one changed in each", tools, ref, "rsync -a", 1.0)
    b.clear(ref_dest, *dests.values())


def big_tree(b: Bench) -> Path:
    s = b.sizes
    return b.tree("tree", s["tree_files"], s["tree_folders"], s["tree_size"])


def tree_label(b: Bench) -> str:
    s = b.sizes
    return f"{s['tree_files']:,} x {s['tree_size'] // 1024} KiB in {s['tree_folders']:,} folders"


def tree_dests(b: Bench, hosts: list[str]) -> tuple[dict[str, Path], dict[str, Path]]:
    """Synced copies of the big tree per host: (ours, rsync's). Copies (cp -a)
    of what the first-sync case left, or of a fresh sync."""
    src = big_tree(b)
    ours = {h: b.remote / h / "tree-ours" for h in hosts}
    theirs = {h: b.remote / h / "tree-rsync" for h in hosts}
    seed_ours, seed_theirs = b.remote / HOSTS[5] / "tree-ours", b.remote / HOSTS[5] / "tree-rsync"
    if not seed_ours.is_dir():
        b.synctasks(b.entries[0], {HOSTS[5]: [{"src": str(src), "dest": str(b.dest(HOSTS[5], "tree-ours"))}]})
    if not seed_theirs.is_dir():
        b.rsync(src, HOSTS[5], b.dest(HOSTS[5], "tree-rsync"))
    for host in hosts:
        b.dest(host, "x")
        if not ours[host].is_dir():
            b.copy_tree(seed_ours, ours[host])
        if not theirs[host].is_dir():
            b.copy_tree(seed_theirs, theirs[host])
    return ours, theirs


def case_tree_first(b: Bench) -> None:
    src = big_tree(b)
    host = HOSTS[5]
    tools, ref = first_sync_tools(b, src, host, "tree-first")
    alternate(tools + [ref], b.rounds)
    b.verify(src, *b.remote.joinpath(host).glob("tree-first-*"))
    b.report(f"{tree_label(b)}, first sync, 1 host", tools, ref, "rsync -a", 1.0)
    # Keep one synced copy each for the no-op cases.
    b.clear(b.remote / host / "tree-ours", b.remote / host / "tree-rsync")
    os.rename(b.remote / host / f"tree-first-{b.entries[0]}", b.remote / host / "tree-ours")
    os.rename(b.remote / host / "tree-first-rsync", b.remote / host / "tree-rsync")
    for e in b.entries[1:]:
        b.clear(b.remote / host / f"tree-first-{e}")


def case_tree_noop(b: Bench) -> None:
    src = big_tree(b)
    host = HOSTS[5]
    ours, theirs = tree_dests(b, [host])
    tools = b.ours(lambda e: {host: [{"src": str(src), "dest": str(ours[host])}]})
    ref = Tool("rsync -a", lambda: b.rsync(src, host, theirs[host]))
    alternate(tools + [ref], b.rounds)
    b.report(f"{tree_label(b)}, no-op, 1 host", tools, ref, "rsync -a no-op", 1.0)


def noop_hosts(b: Bench, hosts: list[str], checksum: bool) -> tuple[list[Tool], Tool]:
    src = big_tree(b)
    ours, theirs = tree_dests(b, hosts)
    tools = b.ours(lambda e: {h: [{"src": str(src), "dest": str(ours[h])}] for h in hosts},
                   flags=("--checksum",) if checksum else ())
    flags = ("-ac",) if checksum else ("-a",)
    ref = Tool(f"{len(hosts)} x rsync {flags[0]}", lambda: b.rsyncs([(src, h, theirs[h]) for h in hosts], flags))
    alternate(tools + [ref], b.rounds)
    return tools, ref


def case_tree_noop4(b: Bench) -> None:
    hosts = HOSTS[5:9]
    tools, ref = noop_hosts(b, hosts, checksum=False)
    b.report(f"{tree_label(b)}, no-op, 4 hosts", tools, ref, "4 rsync -a at once", 1.0)


def case_checksum4(b: Bench) -> None:
    hosts = HOSTS[5:9]
    tools, ref = noop_hosts(b, hosts, checksum=True)
    b.report(f"{tree_label(b)}, --checksum no-op, 4 hosts", tools, ref, "4 rsync -ac at once", 1.0)


def case_hosts16(b: Bench) -> None:
    """500 x 8 KiB to 16 hosts, first sync: against parallel-scp -r and xargs -P 16 rsync -a."""
    s = b.sizes
    src = b.tree("many", s["many_files"], max(1, s["many_files"] // 100), s["many_size"])
    dests = {(e, h): b.dest(h, f"sixteen-{e}") for e in b.entries for h in HOSTS}
    tools = b.ours(lambda e: {h: [{"src": str(src), "dest": str(dests[e, h])}] for h in HOSTS},
                   lambda e: b.clear(*(d for (x, _), d in dests.items() if x == e)))

    # pssh gives every host the same remote path, and here every "host" shares
    # one file system: the legacy SCP protocol (-O, the one synctasks speaks)
    # runs the sink through the remote shell, so `$PPID` (the sshd session's
    # PID) makes each host's path its own. pssh's own defaults stay: scp -qC.
    pscp_base = b.server.make_writable_dir(b.work / "remote" / "pscp")
    hosts_file = b.work / "pssh-hosts"
    hosts_file.write_text("".join(f"{h}:{b.server.port}\n" for h in HOSTS))
    extra = " ".join(["-O", *b.ssh_options(0)])
    pssh = ["parallel-scp", "-r", "-p", "16", "-t", "0", "-h", str(hosts_file), "-l", b.server.user,
            "-x", extra, str(src), f"{pscp_base}/d$PPID"]

    def pssh_check() -> float:
        seconds = b._timed([pssh])
        made = list(pscp_base.iterdir())
        if len(made) != len(HOSTS):
            raise SystemExit(f"parallel-scp made {len(made)} folders, expected {len(HOSTS)}")
        return seconds

    xargs_base = b.server.make_writable_dir(b.work / "remote" / "xargs")
    ssh = " ".join(["ssh", *b.ssh_options(b.server.port)])
    xargs = ["xargs", "-P", "16", "-I{}", "rsync", "-a", "-e", ssh, f"{src}/", f"{b.server.user}@{{}}:{xargs_base}/{{}}/"]

    def run_xargs() -> float:
        started = time.perf_counter()
        subprocess.run(xargs, input="\n".join(HOSTS) + "\n", text=True, check=True, capture_output=True)
        return time.perf_counter() - started

    def empty(folder: Path) -> Callable[[], None]:
        return lambda: [b.clear(p) for p in folder.iterdir()]

    ref_pssh = Tool("parallel-scp -r", pssh_check, empty(pscp_base))
    ref_xargs = Tool("xargs -P 16 rsync", run_xargs, empty(xargs_base))
    alternate(tools + [ref_pssh, ref_xargs], b.rounds)
    b.verify(src, *dests.values(), *xargs_base.iterdir())
    b.verify(src, *pscp_base.iterdir(), meta=False)  # pssh's scp runs without -p: new mtimes
    label = f"{s['many_files']:,} x {s['many_size'] // 1024} KiB, first sync, 16 hosts"
    b.report(label, tools, ref_pssh, "parallel-scp -r", 0.5)
    b.report(label, tools, ref_xargs, "xargs -P16 rsync", 1.0)
    b.clear(*dests.values(), pscp_base, xargs_base)


def rss_case(b: Bench, files: int, size: int, folders: int, name: str, target_mib: int) -> None:
    src = b.tree(name, files, folders, size)
    hosts = HOSTS[:8]
    # The target is `fab sync`'s; the console script only when asked alone (time: these are big runs).
    for entry in b.entries[:1]:
        dests = {h: b.dest(h, f"rss-{name}") for h in hosts}
        b.clear(*dests.values())
        seconds, rss_kib = b.synctasks(entry, {h: [{"src": str(src), "dest": str(d)}] for h, d in dests.items()},
                                       rss=True)
        b.verify(src, dests[hosts[-1]])
        rss = rss_kib / 1024
        label = {"fab": "fab sync", "cli": "synctasks sync"}[entry]
        judged = target_mib if entry == "fab" or "fab" not in b.entries else None
        b.rows.append(Row(f"peak RSS, {files:,} x {size // 1024 or size} {'KiB' if size >= 1024 else 'B'}"
                          f" files to 8 hosts", label, [rss], "-", [], judged, "MiB"))
        verdict = b.rows[-1].verdict
        print(f"  {label:<16} peak RSS {rss:.0f} MiB (target <= {target_mib} MiB: {verdict}); "
              f"{seconds:.2f}s for {8 * files:,} file transfers", flush=True)
        b.clear(*dests.values())


def case_rss20k(b: Bench) -> None:
    s = b.sizes
    rss_case(b, s["rss_files"], s["rss_size"], max(1, s["rss_files"] // 100), "rss", 150)


def case_rss100k(b: Bench) -> None:
    s = b.sizes
    rss_case(b, s["rss_tree"], s["tree_size"], s["tree_folders"], "tree", 200)


CASES: dict[str, tuple[Callable[[Bench], None], str]] = {
    "small": (case_small, "2,000 x 4 KiB, first sync, 1 host vs rsync -a (<= 1.0)"),
    "latency": (case_latency, "the same through a 20 ms round-trip proxy (<= 1.2)"),
    "big": (case_big, "one 512 MiB file vs scp -O (<= 1.1)"),
    "noop": (case_noop, "no-op re-sync of the 2,000 files vs rsync -a (<= 1.2)"),
    "eight": (case_eight, "2,000 files to 8 hosts vs 8 x the 1-host time (<= 0.5)"),
    "changes": (case_changes, "2,000 existing folders x 10 files, one changed in each, vs rsync -a (<= 1.0)"),
    "tree-first": (case_tree_first, "100,000 x 1 KiB in 1,000 folders, first sync, 1 host vs rsync -a (<= 1.0)"),
    "tree-noop": (case_tree_noop, "same tree, no-op, 1 host vs rsync -a (<= 1.0)"),
    "tree-noop4": (case_tree_noop4, "same tree, no-op, 4 hosts vs 4 rsync -a at once (<= 1.0)"),
    "checksum4": (case_checksum4, "same tree, --checksum no-op, 4 hosts vs 4 rsync -ac at once (<= 1.0)"),
    "hosts16": (case_hosts16, "500 x 8 KiB, first sync, 16 hosts vs parallel-scp -r (<= 0.5) "
                              "and xargs -P 16 rsync -a (<= 1.0)"),
    "rss20k": (case_rss20k, "peak RSS, 20,000 x 4 KiB files to 8 hosts (<= 150 MiB)"),
    "rss100k": (case_rss100k, "peak RSS, 100,000 x 1 KiB files to 8 hosts (<= 200 MiB)"),
}
ALIASES = {"rss": "rss20k"}


def print_table(rows: list[Row]) -> None:
    header = ("case", "entry", "synctasks med [min-max]", "reference", "ref med [min-max]", "ratio", "target", "")
    lines = [header]
    for r in rows:
        if r.unit == "MiB":
            lines.append((r.case, r.tool, spread(r.ours, "MiB"), "-", "-", "-",
                          f"<= {r.target} MiB" if r.target else "-", r.verdict))
        else:
            lines.append((r.case, r.tool, spread(r.ours), r.reference, spread(r.theirs), f"{r.ratio:.2f}",
                          f"<= {r.target}" if r.target is not None else "-", r.verdict))
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    for line in lines:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(line, widths)) + " |")


def print_less_start(rows: list[Row]) -> None:
    """Each judged `fab sync` ratio again, less Fabric's start (the median
    of `fab version`, timed in turn with the tools of the same case): what
    synctasks' own work takes beside the reference. A target missed only
    by the start is at Fabric's floor."""
    judged = [r for r in rows if r.tool == "fab sync" and r.theirs and r.target is not None and r.start]
    if judged:
        print("\nfab sync ratios less Fabric's start (`fab version`, timed in the same case):")
    for r in judged:
        less = statistics.median(r.start)
        ratio = (statistics.median(r.ours) - less) / statistics.median(r.theirs)
        print(f"  {r.case:<60} {r.ratio:.2f} -> {ratio:.2f} (start {spread(r.start)}; target <= {r.target})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, help="runs of each tool per case (default 3; 1 with --quick)")
    parser.add_argument("--case", "--cases", dest="cases", default=",".join(CASES),
                        help="case names, comma-separated (see --list)")
    parser.add_argument("--quick", action="store_true", help="small sizes, 1 round: a smoke test")
    parser.add_argument("--entry", choices=("both", "fab", "cli"), default="both",
                        help="synctasks' entry: `fab sync`, `synctasks sync`, or both (default)")
    parser.add_argument("--cli-rounds", type=int, default=1,
                        help="rounds of `synctasks sync` beside `fab sync` (default 1: the targets are fab's; "
                             "this keeps the full run near 10 minutes)")
    parser.add_argument("--big-mib", type=int, help="size of the big-file case (default 512)")
    parser.add_argument("--rss-files", type=int, help="files of the rss20k case (default 20,000)")
    parser.add_argument("--tree-files", type=int, help="files of the tree cases (default 100,000)")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (data, logs) at the end")
    args = parser.parse_args()
    if args.list:
        for name, (_, text) in CASES.items():
            print(f"{name:<11} {text}")
        return 0
    cases = [ALIASES.get(c.strip(), c.strip()) for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; known: {', '.join(CASES)}")
    sizes = dict(QUICK if args.quick else FULL)
    for key, value in (("big_mib", args.big_mib), ("rss_files", args.rss_files), ("tree_files", args.tree_files)):
        if value:
            sizes[key] = value
    if args.tree_files:
        sizes["tree_folders"] = max(1, args.tree_files // 100)
        sizes["rss_tree"] = args.tree_files
    rounds = args.rounds or (1 if args.quick else 3)
    entries = ["fab", "cli"] if args.entry == "both" else [args.entry]
    missing = [t for t in ("rsync", "parallel-scp", "xargs", TIME) if not shutil.which(t)]
    if missing:
        raise SystemExit(f"missing: {', '.join(missing)} (scripts/bench.sh installs them)")

    shm = Path("/dev/shm")
    base = Path(os.environ.get("SYNCTASKS_BENCH_DIR", shm if shm.is_dir() else "/tmp"))
    work = base / f"synctasks-bench-{os.getpid()}"
    work.mkdir(parents=True)
    os.chmod(work, 0o755)
    started = time.perf_counter()
    try:
        with TestServer(work / "server", addresses=HOSTS) as server:
            b = Bench(work, server, rounds, entries, sizes)
            b.cli_rounds = min(args.cli_rounds, rounds)
            fs = subprocess.run(["stat", "-f", "-c", "%T", str(work)], capture_output=True, text=True).stdout.strip()
            print(f"benchmark: sshd on {HOSTS[0]}-{HOSTS[-1].split('.')[-1]} port {server.port}, data in {work} "
                  f"({fs}), {rounds} round(s), entries {' and '.join(entries)}, load {os.getloadavg()[0]:.2f}"
                  f"{', QUICK sizes' if args.quick else ''}", flush=True)
            failed = []
            for name in cases:
                print(f"[{name}] {CASES[name][1]}", flush=True)
                case_started = time.perf_counter()
                try:
                    CASES[name][0](b)
                except SystemExit as exc:  # a tool failed or a result was wrong: report it, go on
                    failed.append(name)
                    print(f"  FAILED: {str(exc.code).strip()[-1500:]}", flush=True)
                print(f"  ({time.perf_counter() - case_started:.1f}s)", flush=True)
            print(f"\nall cases in {time.perf_counter() - started:.0f}s, load now {os.getloadavg()[0]:.2f}\n")
            print_table(b.rows)
            print_less_start(b.rows)
            if failed:
                print(f"\nFAILED cases (a tool failed or a destination was wrong): {', '.join(failed)}")
            return 0 if not failed and all(r.verdict in ("PASS", "-") for r in b.rows) else 1
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
