"""The command-line front end, shared by ``fab`` tasks and the ``synctasks``
console script: parse flags, call the library, print, return an exit status.

Exit status: 0 every host in sync, 1 some host failed, 2 bad configuration or
input (nothing was sent).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from . import constants as K
from .errors import InputError
from .inputs import Inventory, load_inventory, load_settings
from .logger import clean, close_logging, get_logger, redact_data, setup_logging
from .plan import unsafe_for_delete
from .progress import for_console, human_bytes
from .results import GroupResult, HostResult
from .runner import check_hosts, select_hosts, sync_inventory


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
        prefix = f"{host}: " if host and host != "-" else ""
        return f"{record.levelname.lower()}: {prefix}{record.getMessage()}"


def print_input_error(exc: InputError) -> None:
    """One ``error:`` line per problem (an InputError may list several)."""
    for line in str(exc).splitlines() or [""]:
        print(f"error: {line}", file=sys.stderr)


def printable(text: str) -> str:
    """One line, whatever the path holds: control characters escaped, secrets
    masked (remote error text may echo one), as in the logs."""
    return clean(text)


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


def _print_items(result: HostResult, verbose: bool, out) -> None:
    for mapping in result.mappings:
        # Deletions first, as rsync --delete shows them: the part to check.
        for record in sorted(mapping.files, key=lambda r: r.action != "delete"):
            if record.action == "skip" and not verbose:
                continue
            flags = record.flags or "fail       "
            note = f"  ({record.reason})" if record.action == "fail" else ""
            print(printable(f"{result.host}: {flags} {record.path}{note}"), file=out)


def print_summary(group: GroupResult, out, dry_run: bool = False) -> None:
    """One row per host; a failed host's first error in the last column."""
    rows = [("HOST", "STATUS", "SENT", "SKIPPED", "DELETED", "FAILED", "BYTES", "SECONDS", "CHANGED", "FIRST ERROR")]
    for host, r in group.items():
        changed = ("would " if dry_run else "") + ("yes" if r.changed else "no")
        error = printable(r.first_error or "")
        if len(error) > 100:
            error = error[:97] + "..."
        rows.append((host, "ok" if r.ok else "FAILED", str(r.sent), str(r.skipped), str(r.deleted), str(r.failed),
                     human_bytes(r.bytes), f"{r.seconds:.2f}", changed, error))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip(), file=out)


def run_sync(config: str | None = None, *, only=None, dry_run: bool = False, delete: bool | None = None,
             checksum: bool = False, json_path: str | None = None, quiet: bool = False, verbose: bool = False,
             force: bool = False, out=None, lightweight: bool = False) -> int:
    out = out or sys.stdout
    started = time.monotonic()
    try:
        inventory = _load(config)
        select_hosts(inventory.hosts, only)  # bad --only is an input error
        if (delete or (delete is None and inventory.settings.delete)) and not force:
            _check_shallow_dests(inventory)
    except InputError as exc:
        print_input_error(exc)
        close_logging()
        return K.EXIT_BAD_INPUT
    if quiet:
        for handler in logging.getLogger("synctasks").handlers[2:]:
            handler.setLevel(logging.ERROR)

    progress = for_console(quiet or dry_run, out)
    progress.start([h.name for h in select_hosts(inventory.hosts, only) if h.name in inventory.mappings])

    def on_result(result: HostResult) -> None:
        progress.finished(result)
        if dry_run or verbose:
            _print_items(result, verbose, out)
        if not quiet and not progress.draws:
            state = "ok" if result.ok else "FAILED: " + printable(result.first_error or "")
            print(f"{result.host}: {state} ({result.sent} sent, {result.skipped} skipped, {result.deleted} deleted,"
                  f" {human_bytes(result.bytes)}, {result.seconds:.2f}s)", file=out)

    try:
        group = sync_inventory(inventory=inventory, only=only, dry_run=dry_run, delete=delete, checksum=checksum,
                               force=force, on_result=on_result, lightweight=lightweight, progress=progress)
    finally:
        progress.close()
    seconds = time.monotonic() - started
    if json_path:
        report = redact_data(group.to_dict(seconds, inventory.warnings))
        Path(json_path).write_text(json.dumps(report, indent=2) + "\n")
    if not quiet:
        print_summary(group, out, dry_run)
    word = "dry run" if dry_run else "sync"
    if group.failed:
        print(f"{word} FAILED on {len(group.failed)} of {len(group)} host(s) in {seconds:.2f}s", file=out)
    elif not quiet:
        print(f"{word} done: {len(group)} host(s) in sync in {seconds:.2f}s", file=out)
    close_logging()
    return group.exit_code


def _check_shallow_dests(inventory: Inventory) -> None:
    for mappings in inventory.mappings.values():
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


def run_check(config: str | None = None, only=None, out=None, lightweight: bool = False) -> int:
    out = out or sys.stdout
    try:
        inventory = _load(config)
        select_hosts(inventory.hosts, only)
    except InputError as exc:
        print_input_error(exc)
        close_logging()
        return K.EXIT_BAD_INPUT
    status = check_hosts(inventory, only, lightweight)
    for host, error in status.items():
        print(f"{host}: {'ok (host key and login verified)' if error is None else 'FAILED: ' + error}", file=out)
    close_logging()
    return K.EXIT_FAILED if any(status.values()) else K.EXIT_OK


COMMANDS = ("sync", "plan", "validate", "check", "watch")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="synctasks", description="Push files and folders to many SSH hosts.")
    parser.add_argument("--config", help="config.ini to use (default: $SYNCTASKS_CONFIG or ./config.ini)")
    commands = parser.add_subparsers(dest="command")

    def sync_flags(p: argparse.ArgumentParser, plan: bool = False) -> None:
        p.add_argument("--config", default=argparse.SUPPRESS, help="config.ini to use")
        p.add_argument("--only", help="hosts to sync: names, IPs or shell patterns, comma-separated")
        if not plan:
            p.add_argument("--dry-run", action="store_true", help="show what would change, change nothing")
        p.add_argument("--delete", action="store_true", default=None,
                       help="remove remote files under dest that are not in src")
        p.add_argument("--force", action="store_true", help="allow --delete on a dest close to /")
        p.add_argument("--checksum", action="store_true", help="compare file contents, not size and mtime")
        p.add_argument("--json", dest="json_path", metavar="PATH", help="write a machine-readable report")
        p.add_argument("--quiet", action="store_true", help="print only errors and the final status")
        p.add_argument("--verbose", action="store_true", help="also print a line per file, skipped ones too")

    sync_flags(commands.add_parser("sync", help="sync every host (the default command)"))
    sync_flags(commands.add_parser("plan", help="show what sync would do (same as sync --dry-run)"), plan=True)
    validate = commands.add_parser("validate", help="check the input files; connect to nothing")
    validate.add_argument("--config", default=argparse.SUPPRESS, help="config.ini to use")
    check = commands.add_parser("check", help="connect to every host: host key, login, reachability")
    check.add_argument("--config", default=argparse.SUPPRESS, help="config.ini to use")
    check.add_argument("--only", help="hosts to check")
    from . import watch  # its flags and its run live in watch.py

    watch.add_parser(commands)
    return parser


def main(argv: list[str] | None = None, lightweight: bool = False) -> int:
    """Parse ``argv`` and run; ``lightweight`` connects with paramiko alone."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not any(a in COMMANDS or a in ("-h", "--help") for a in argv):
        argv.insert(0, "sync")  # sync is the default command
    args = _parser().parse_args(argv)
    if args.command == "validate":
        return run_validate(args.config)
    if args.command == "check":
        return run_check(args.config, args.only, lightweight=lightweight)
    if args.command == "watch":
        from . import watch

        return watch.main(args, lightweight=lightweight)
    return run_sync(args.config, only=args.only, dry_run=getattr(args, "dry_run", False) or args.command == "plan",
                    delete=args.delete, checksum=args.checksum, json_path=args.json_path, quiet=args.quiet,
                    verbose=args.verbose, force=args.force, lightweight=lightweight)


if __name__ == "__main__":
    sys.exit(main())
