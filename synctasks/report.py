"""What a run prints and writes: itemized lines, the summary table, the final
status line, the JSON report, and the merge of shard reports.

The summary works on report dicts (``GroupResult.to_dict()``), so a live
run and ``synctasks report merge`` of shard reports print the same thing.
Everything that may come from a remote host (paths, error messages) is
escaped first: no raw terminal escapes, undecodable bytes as ``\\xNN``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from . import constants as K
from .errors import InputError
from .progress import escape, human_bytes
from .results import NO_MAPPING, NOT_STARTED, STOPPED, HostResult

#: Widest table line on a terminal that does not say (and in CI logs).
TABLE_WIDTH = 80


def item_lines(result: HostResult, verbosity: int) -> list[str]:
    """rsync ``-i`` style lines: changes and failures; skips too at ``-vv``."""
    lines = []
    host = escape(result.host)
    for mapping in result.mappings:
        # Deletions first, as rsync --delete shows them: the part to check.
        for record in sorted(mapping.files, key=lambda r: r.action != "delete"):
            if record.action == "skip" and verbosity < 2:
                continue
            flags = record.flags or "fail       "
            note = f"  ({escape(record.reason)})" if record.action == "fail" else ""
            lines.append(f"{host}: {flags} {escape(record.path)}{note}")
    return lines


def host_line(result: HostResult) -> str:
    """One line per finished host (CI logs, pipes)."""
    host = escape(result.host)
    if result.state in (STOPPED, NOT_STARTED, NO_MAPPING):
        return f"{host}: {result.state}"
    size, seconds = human_bytes(result.bytes), f"{result.seconds:.2f}s"
    if result.dry_run and result.changed:
        counts = (f"would send {result.sent} file(s), {size}, would delete {result.deleted}, "
                  f"{result.skipped} unchanged, {seconds}")
    elif result.dry_run or (result.ok and not result.changed):
        counts = f"{result.skipped} unchanged, {seconds}"
    else:
        counts = f"{result.sent} sent, {result.skipped} skipped, {result.deleted} deleted, {size}, {seconds}"
    if result.backend:  # how the host was reached: the shell backend or SFTP alone
        counts += f", via {result.backend}"
    for note in result.notes:
        counts += f"; {escape(note)}"
    if not result.ok:
        if result.error and not result.mappings:  # never got to its files
            return f"{host}: FAILED: {escape(result.error)} ({seconds})"
        return f"{host}: FAILED: {escape(result.first_error or '')} ({counts})"
    if result.dry_run:
        return f"{host}: {result.status} ({counts})"
    return f"{host}: ok, {result.status} ({counts})"


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(width - 3, 0)] + "..."


def summary_lines(report: dict, width: int = TABLE_WIDTH) -> list[str]:
    """The table: one row per host, a failed host's first error indented
    below its row (a column for it would wrap any terminal)."""
    hosts = report.get("hosts", [])
    dry = any(h.get("dry_run") for h in hosts)
    head = ("HOST", "STATUS", "TO SEND" if dry else "SENT", "SKIPPED", "TO DELETE" if dry else "DELETED", "FAILED",
            "BYTES", "TIME")
    rows = [head]
    errors: dict[int, str] = {}
    for host in hosts:
        status = host.get("status") or ("in sync" if host.get("ok") else "FAILED")
        rows.append((escape(str(host.get("host"))), status, str(host.get("sent", 0)), str(host.get("skipped", 0)),
                     str(host.get("deleted", 0)), str(host.get("failed", 0)), human_bytes(host.get("bytes", 0)),
                     f"{host.get('seconds', 0):.2f}s"))
        if host.get("error"):
            errors[len(rows) - 1] = escape(str(host["error"]))
    columns = list(range(len(head)))
    # Too wide (long host names)? Drop what matters least: the time, then
    # columns that are all zero.
    for drop in (7, 5, 4, 3):
        if _width(rows, columns) <= width:
            break
        if drop == 7 or all(row[drop] == "0" for row in rows[1:]):
            columns.remove(drop)
    widths = {i: max(len(row[i]) for row in rows) for i in columns}
    numeric = {2, 3, 4, 5}
    lines = []
    for number, row in enumerate(rows):
        cells = [row[i].rjust(widths[i]) if i in numeric and number else row[i].ljust(widths[i]) for i in columns]
        lines.append("  ".join(cells).rstrip())
        if number in errors:
            lines.append(_cut("    " + errors[number], width))
    return lines


def _width(rows, columns) -> int:
    return sum(max(len(row[i]) for row in rows) for i in columns) + 2 * (len(columns) - 1)


def final_line(report: dict, label: str | None = None) -> str:
    """The last line of a run: what happened, in words (printed even with --quiet)."""
    hosts = report.get("hosts", [])
    dry = any(h.get("dry_run") for h in hosts)
    label = label or ("dry run" if dry else "sync")
    seconds = report.get("seconds", 0.0)

    def named(state: str) -> list[str]:
        return [escape(str(h.get("host"))) for h in hosts if h.get("status") == state]

    tail = ""
    if named(NO_MAPPING):
        tail = f"; no mapping: {', '.join(named(NO_MAPPING))}"
    if report.get("interrupted"):
        finished = [escape(str(h.get("host"))) for h in hosts
                    if h.get("status") not in (STOPPED, NOT_STARTED, NO_MAPPING)]
        parts = [f"finished: {', '.join(finished) or 'none'}", f"stopped: {', '.join(named(STOPPED)) or 'none'}",
                 f"not started: {', '.join(named(NOT_STARTED)) or 'none'}"]
        return f"{label} INTERRUPTED ({report['interrupted']}) after {seconds:.2f}s; " + "; ".join(parts) + tail
    failed = [h for h in hosts if not h.get("ok")]
    ran = [h for h in hosts if h.get("status") != NO_MAPPING]
    if failed:
        return (f"{label} FAILED on {len(failed)} of {len(ran)} host(s) in {seconds:.2f}s: "
                + ", ".join(escape(str(h.get("host"))) for h in failed) + tail)
    changed = [h for h in ran if h.get("changed")]
    if dry:
        files = sum(h.get("sent", 0) for h in ran)
        deletes = sum(h.get("deleted", 0) for h in ran)
        if changed:
            unchanged = len(ran) - len(changed)
            return (f"{label}: {len(changed)} of {len(ran)} host(s) would change ({files} file(s) would be sent, "
                    f"{deletes} deleted){f', {unchanged} in sync' if unchanged else ''}; nothing was changed{tail}")
        return f"{label}: all {len(ran)} host(s) in sync, nothing would change{tail}"
    return (f"{label} done: {len(ran)} host(s) in sync ({len(changed)} changed) in {seconds:.2f}s{tail}")


def table_width(out) -> int:
    if hasattr(out, "isatty") and out.isatty():
        return shutil.get_terminal_size((TABLE_WIDTH, 24)).columns
    return TABLE_WIDTH


def write_report(path: str | Path, report: dict) -> None:
    """Write the JSON report whole or not at all (a reader never sees half)."""
    target = Path(path)
    temporary = target.with_name(f".{target.name}.tmp")
    temporary.write_text(json.dumps(report, indent=2) + "\n")
    temporary.replace(target)


# --------------------------------------------------------------------------
# synctasks report merge
# --------------------------------------------------------------------------
#: Exit statuses from best to worst: interrupted shards are the worst (their
#: hosts were not all tried), then bad input, then failed hosts.
SEVERITY = (K.EXIT_OK, K.EXIT_FAILED, K.EXIT_BAD_INPUT, 143, 130)


def worst(statuses) -> int:
    def rank(status: int) -> int:
        return SEVERITY.index(status) if status in SEVERITY else len(SEVERITY)

    return max(statuses, key=rank, default=K.EXIT_OK)


def load_report(path: str | Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise InputError(f"{path}: cannot read the report: {exc.strerror or exc}: did that shard run?") from None
    except ValueError as exc:
        raise InputError(f"{path}: not a synctasks JSON report: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("hosts"), list) or "version" not in data:
        raise InputError(f"{path}: not a synctasks JSON report (written by --json PATH)")
    if data["version"] != K.REPORT_VERSION:
        raise InputError(f"{path}: report version {data['version']}, this synctasks reads {K.REPORT_VERSION}")
    return data


def exit_code_of(report: dict) -> int:
    if isinstance(report.get("exit_code"), int):
        return report["exit_code"]
    return K.EXIT_OK if report.get("ok") else K.EXIT_FAILED


def merge_reports(paths: list[str | Path]) -> tuple[dict, int]:
    """One report from shard reports, and the worst of their statuses.

    A host in two reports is an error of the CI set-up (the shards overlap):
    refused with exit 2 rather than counted twice.
    """
    if not paths:
        raise InputError("report merge: give the shard reports to merge (e.g. shard-*.json)")
    reports = [load_report(p) for p in paths]
    seen: dict[str, str] = {}
    hosts = []
    for path, report in zip(paths, reports):
        for host in report["hosts"]:
            name = str(host.get("host"))
            if name in seen:
                raise InputError(f"{path}: host {name} is also in {seen[name]}: the shards overlap "
                                 "(each job must use the same host list and its own --shard K/N)")
            seen[name] = str(path)
            hosts.append(host)
    status = worst(exit_code_of(r) for r in reports)
    interrupted = next((r["interrupted"] for r in reports if r.get("interrupted")), None)
    merged = {"version": K.REPORT_VERSION, "ok": status == K.EXIT_OK, "exit_code": status,
              "changed": any(r.get("changed") for r in reports), "interrupted": interrupted,
              "seconds": max((r.get("seconds", 0.0) for r in reports), default=0.0),
              "warnings": [w for r in reports for w in r.get("warnings", [])], "hosts": hosts,
              "merged_from": [str(p) for p in paths]}
    return merged, status


__all__ = ["item_lines", "host_line", "summary_lines", "final_line", "merge_reports", "write_report", "worst"]
