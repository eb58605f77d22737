"""The command-line front end, shared by ``fab`` tasks and the ``synctasks``
console script: parse flags, call the library, print, return an exit status.

Exit status: 0 every host in sync, 1 some host failed, 2 bad configuration or
input (nothing was sent), 130 / 143 stopped by SIGINT / SIGTERM (queued
hosts never start, running ones stop between files; the summary and the
report say which hosts finished, which were stopped, which never started).
"""

from __future__ import annotations

import gc
import logging
import signal
import sys
import threading
import time
from dataclasses import replace
from typing import TYPE_CHECKING

from . import __version__
from . import constants as K
from .connection import connect_early
from .errors import InputError
from .inputs import HostEntry, Inventory, load_inventory, load_settings, select_hosts, shard_hosts
from .logger import clean as escape, close_logging, get_logger, redact_data, setup_logging  # escape: progress's

if TYPE_CHECKING:
    import argparse

    from .results import HostResult

# The planner, the runner (and what they import: the transfer engine) and
# the report are imported once the run's connections are being opened: the
# handshakes, mostly waiting for the servers, overlap the imports (30-40 ms).


class _ConsoleHandler(logging.Handler):
    """Writes to whatever sys.stderr is at the time (progress bars redirect it
    to print log lines above themselves)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(self.format(record), file=sys.stderr, flush=True)
        except Exception:
            self.handleError(record)


class _ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        host = getattr(record, "host", "-")
        message = record.getMessage()
        if host and host != "-":
            # Messages of errors carry their host already: say it once.
            message = message.removeprefix(f"{host}: ")
            return f"{record.levelname.lower()}: {escape(host)}: {escape(message)}"
        return f"{record.levelname.lower()}: {escape(message)}"


def printable(text: str) -> str:
    """One line, whatever the text holds (see :func:`synctasks.progress.escape`)."""
    return escape(text)


def _print_items(result: HostResult, verbose: int, out) -> None:
    """Itemized lines of ``result`` to ``out`` (changes; skips too at 2)."""
    from .report import item_lines

    for line in item_lines(result, max(int(verbose or 0), 1)):
        print(line, file=out)


def print_input_error(exc: InputError) -> None:
    """One ``error:`` line per problem (an InputError may list several)."""
    for line in str(exc).splitlines() or [""]:
        print(f"error: {escape(line)}", file=sys.stderr)


class _Signals:
    """While a run lasts, SIGINT and SIGTERM stop it instead of killing it:
    the first sets ``cancel`` (queued hosts never start, running ones stop
    between files), the second ``hurry`` (stop waiting for them)."""

    def __init__(self):
        self.cancel = threading.Event()
        self.hurry = threading.Event()
        #: The first signal received, if any.
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        # Only flags here: printing from a handler can re-enter a write.
        if self.signum is None:
            self.signum = signum
            self.cancel.set()
        else:
            self.hurry.set()

    def __enter__(self) -> "_Signals":
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


class _CollectorPaused:
    """Python's cyclic garbage collector off while a run lasts (as it was
    before, after).

    A sync makes objects by the hundred thousand (entries, records, plans)
    and few reference cycles, and the collector's passes over them were
    pure cost: 40-100 ms of a 2,000-folder changes run, 0.1-0.2 s of a
    100,000-file no-op or first sync on the benchmark's machine. What is
    in cycles is each closed connection (paramiko's transport and what it
    holds): the runner collects as each waiting host starts (run_hosts),
    so a long queue of hosts does not hold all of theirs to the end.
    """

    def __enter__(self) -> None:
        self._was_on = gc.isenabled()
        gc.disable()

    def __exit__(self, *exc) -> None:
        if self._was_on:
            # What the run made is set aside first, then handed back as the
            # oldest generation: enabled as it was, the collector's next pass
            # went over every object made meanwhile (0.1-0.2 s at the end
            # of a 100,000-file first sync, on the way out).
            gc.freeze()
            gc.enable()
            gc.unfreeze()


def _load(config: str | None, overrides: dict | None = None) -> Inventory:
    settings = load_settings(config, overrides)
    console = _ConsoleHandler()
    console.setFormatter(_ConsoleFormatter())
    console.setLevel(logging.WARNING)
    setup_logging(settings, console)
    log = get_logger()
    log.debug("config file %s", settings.config_path)
    for origin in settings.origins:
        log.debug("config %s", origin)
    inventory = load_inventory(settings=settings)
    for warning in inventory.warnings:
        log.warning("%s", warning)
    return inventory


def split_host_string(spec: str) -> tuple[str | None, str, int | None]:
    """``user@host:port`` (Fabric's -H form; ``[v6addr]:port`` too) ->
    (user, host, port)."""
    user, _, rest = spec.rpartition("@")
    if rest.startswith("["):
        host, _, port = rest[1:].partition("]")
        port = port.removeprefix(":")
    elif rest.count(":") == 1:
        host, port = rest.split(":")
    else:
        host, port = rest, ""
    if port and not port.isdigit():
        raise InputError(f"-H {spec}: port {port!r} is not a number")
    return user or None, host, int(port) if port else None


def hosts_from_specs(hosts: list[HostEntry], specs: list[str], flag: str = "-H") -> list[HostEntry]:
    """The connection_info.json entries named by ``fab -H`` host strings, with
    the user and port typed there taking the place of the file's."""
    by_name = {h.name: h for h in hosts}
    chosen: list[HostEntry] = []
    unknown = []
    log = get_logger()
    for spec in specs:
        user, name, port = split_host_string(spec.strip())
        entry = by_name.get(name)
        if entry is None:
            unknown.append(spec)
            continue
        if any(h.name == name for h in chosen):
            raise InputError(f"{flag} names {name} twice: one run syncs each host once")
        changes = {}
        if user and user != entry.user:
            changes["user"] = user
            log.debug("%s: user %s from %s (%s says %s)", name, user, flag, entry.source, entry.user)
        if port and port != entry.port:
            changes["port"] = port
            log.debug("%s: port %s from %s (%s says %s)", name, port, flag, entry.source, entry.port)
        chosen.append(replace(entry, **changes) if changes else entry)
    if unknown:
        raise InputError(f"{flag} {', '.join(unknown)}: no such host in connection_info.json: "
                         f"pick from {', '.join(h.name for h in hosts)}")
    return chosen


def run_sync(config: str | None = None, *, only=None, hosts: list[str] | None = None, shard: str | None = None,
             dry_run: bool = False, delete: bool | None = None, checksum: bool = False, json_path: str | None = None,
             quiet: bool = False, verbose: int | bool = 0, force: bool = False, out=None,
             lightweight: bool = False) -> int:
    """``hosts``: ``fab -H`` host strings (user and port honored);
    ``verbose``: 1 lists changed items, 2 skipped ones too."""
    out = out or sys.stdout
    verbose = int(verbose or 0)
    started = time.monotonic()
    with _Signals() as stop, _CollectorPaused():
        try:
            inventory = _load(config)
            if hosts:
                selected = hosts_from_specs(inventory.hosts, hosts)
                if only:
                    names = {h.name for h in select_hosts(inventory.hosts, only)}
                    selected = [h for h in selected if h.name in names]
            else:
                selected = select_hosts(inventory.hosts, only)
            selected = shard_hosts(selected, shard)
            if (delete or (delete is None and inventory.settings.delete)) and not force:
                check_shallow_dests(inventory, {h.name for h in selected})
        except InputError as exc:
            print_input_error(exc)
            close_logging()
            return K.EXIT_BAD_INPUT
        early = connect_early(inventory, selected, lightweight)
        from .progress import for_console
        from .report import final_line, host_line, item_lines, summary_lines, table_width, write_report
        from .runner import sync_inventory
        if quiet:
            for handler in logging.getLogger("synctasks").handlers[2:]:
                handler.setLevel(logging.ERROR)

        progress = for_console(quiet or dry_run, out)
        progress.start([h.name for h in selected if h.name in inventory.mappings])

        def on_result(result: HostResult) -> None:
            progress.finished(result)
            if quiet:
                return
            if dry_run or verbose:
                for line in item_lines(result, max(verbose, 1)):
                    progress.line(line)
            for note in result.notes:
                progress.line(f"{escape(result.host)}: note: {escape(note)}")
            if not progress.draws:
                progress.line(host_line(result))

        try:
            group = sync_inventory(inventory=inventory, hosts=selected, dry_run=dry_run, delete=delete,
                                   checksum=checksum, force=force, on_result=on_result, lightweight=lightweight,
                                   progress=progress, warn=True, cancel=stop.cancel, hurry=stop.hurry,
                                   list_unchanged=verbose >= 2, early=early)
        finally:
            progress.close()
        if stop.signum:
            group.interrupted = stop.signum
        # Per-file records only for the JSON file: the summary needs counts
        # (100,000 files to 8 hosts would be 800,000 dicts).
        report = redact_data(group.to_dict(time.monotonic() - started, inventory.warnings, files=bool(json_path)))
        status = group.exit_code
        if json_path:
            try:
                write_report(json_path, report)
            except OSError as exc:
                print(f"error: cannot write the report {json_path}: {exc.strerror or exc}", file=sys.stderr)
                status = status or K.EXIT_FAILED
        if not quiet:
            for line in summary_lines(report, table_width(out)):
                print(line, file=out)
        print(final_line(report), file=out, flush=True)
        close_logging()
        return status


def check_shallow_dests(inventory: Inventory, names: set[str]) -> None:
    """Refuse --delete (input error) on a dest of these hosts that is too
    close to / (the remote home is checked once it is known)."""
    from .plan import unsafe_for_delete

    for name, mappings in inventory.mappings.items():
        if name not in names:
            continue
        for mapping in mappings:
            why = unsafe_for_delete(mapping)
            if why:
                raise InputError(f"{mapping.source}: refusing --delete on dest {mapping.dest}: {why}; "
                                 "pick a deeper dest or pass --force")


def run_validate(config: str | None = None, out=None) -> int:
    out = out or sys.stdout
    try:
        inventory = _load(config)
    except InputError as exc:
        print_input_error(exc)
        close_logging()
        return K.EXIT_BAD_INPUT
    count = sum(len(m) for m in inventory.mappings.values())
    print(f"inputs valid: {len(inventory.hosts)} host(s), {count} mapping(s), "
          f"{len(inventory.warnings)} warning(s)", file=out)
    close_logging()
    return K.EXIT_OK


def run_check(config: str | None = None, only=None, out=None, lightweight: bool = False,
              hosts: list[str] | None = None) -> int:
    """``hosts``: ``fab -H`` host strings (user and port honored)."""
    out = out or sys.stdout
    try:
        inventory = _load(config)
        selected = hosts_from_specs(inventory.hosts, hosts) if hosts else select_hosts(inventory.hosts, only)
    except InputError as exc:
        print_input_error(exc)
        close_logging()
        return K.EXIT_BAD_INPUT
    from .runner import check_hosts

    status = check_hosts(inventory, hosts=selected, lightweight=lightweight)
    for host, error in status.items():
        state = "ok (host key and login verified)" if error is None else "FAILED: " + escape(error)
        print(f"{escape(host)}: {state}", file=out)
    close_logging()
    return K.EXIT_FAILED if any(status.values()) else K.EXIT_OK


def run_report_merge(paths: list[str], json_path: str | None = None, quiet: bool = False, out=None) -> int:
    """``synctasks report merge a.json b.json ...``: one summary for a run
    split into shards, and the worst of their statuses."""
    from .report import final_line, merge_reports, summary_lines, table_width, write_report

    out = out or sys.stdout
    try:
        merged, status = merge_reports(paths)
    except InputError as exc:
        print_input_error(exc)
        return K.EXIT_BAD_INPUT
    if json_path:
        write_report(json_path, merged)
    if not quiet:
        for line in summary_lines(merged, table_width(out)):
            print(line, file=out)
    print(final_line(merged, f"{len(paths)} report(s):"), file=out)
    return status


COMMANDS = ("sync", "plan", "validate", "check", "watch", "report")


def _parser() -> argparse.ArgumentParser:
    import argparse  # the console script's alone (fab parses its own flags)

    parser = argparse.ArgumentParser(prog="synctasks", description="Push files and folders to many SSH hosts.")
    parser.add_argument("--version", action="version", version=f"synctasks {__version__}")
    parser.add_argument("--config", help="config.ini to use (default: $SYNCTASKS_CONFIG or ./config.ini)")
    commands = parser.add_subparsers(dest="command")

    def sync_flags(p: argparse.ArgumentParser, plan: bool = False) -> None:
        p.add_argument("--config", default=argparse.SUPPRESS, help="config.ini to use")
        p.add_argument("--only", help="hosts to sync: names, IPs or shell patterns, comma-separated")
        p.add_argument("--shard", metavar="K/N",
                       help="sync only shard K of N of the selected hosts (stable: by a hash of the host name)")
        if not plan:
            p.add_argument("--dry-run", action="store_true", help="show what would change, change nothing")
        p.add_argument("--delete", action="store_true", default=None,
                       help="remove remote files under dest that are not in src")
        p.add_argument("--force", action="store_true", help="allow --delete on a dest close to /")
        p.add_argument("--checksum", action="store_true", help="compare file contents, not size and mtime")
        p.add_argument("--json", dest="json_path", metavar="PATH", help="write a machine-readable report")
        p.add_argument("-q", "--quiet", action="store_true", help="print only errors and the final status")
        p.add_argument("-v", "--verbose", action="count", default=0,
                       help="list changed files (-vv: unchanged ones too)")

    sync_flags(commands.add_parser("sync", help="sync every host (the default command)"))
    sync_flags(commands.add_parser("plan", help="show what sync would do (same as sync --dry-run)"), plan=True)
    validate = commands.add_parser("validate", help="check the input files; connect to nothing")
    validate.add_argument("--config", default=argparse.SUPPRESS, help="config.ini to use")
    check = commands.add_parser("check", help="connect to every host: host key, login, reachability")
    check.add_argument("--config", default=argparse.SUPPRESS, help="config.ini to use")
    check.add_argument("--only", help="hosts to check")
    report = commands.add_parser("report", help="work with --json reports")
    actions = report.add_subparsers(dest="action", required=True)
    merge = actions.add_parser("merge", help="one summary and exit status from the reports of shards")
    merge.add_argument("reports", nargs="+", metavar="REPORT.json")
    merge.add_argument("--json", dest="json_path", metavar="PATH", help="write the merged report here")
    merge.add_argument("-q", "--quiet", action="store_true", help="print only the final status")
    from . import watch  # its flags and its run live in watch.py

    watch.add_parser(commands)
    return parser


def main(argv: list[str] | None = None, lightweight: bool = False) -> int:
    """Parse ``argv`` and run; ``lightweight`` connects with paramiko alone."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not any(a in COMMANDS or a in ("-h", "--help", "--version") for a in argv):
        argv.insert(0, "sync")  # sync is the default command
    args = _parser().parse_args(argv)
    if args.command == "validate":
        return run_validate(args.config)
    if args.command == "check":
        return run_check(args.config, args.only, lightweight=lightweight)
    if args.command == "watch":
        from . import watch

        return watch.main(args, lightweight=lightweight)
    if args.command == "report":
        return run_report_merge(args.reports, args.json_path, args.quiet)
    return run_sync(args.config, only=args.only, shard=args.shard,
                    dry_run=getattr(args, "dry_run", False) or args.command == "plan", delete=args.delete,
                    checksum=args.checksum, json_path=args.json_path, quiet=args.quiet, verbose=args.verbose,
                    force=args.force, lightweight=lightweight)


if __name__ == "__main__":
    sys.exit(main())
