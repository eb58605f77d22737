"""Invoke/Fabric tasks: thin wrappers over :mod:`synctasks.cli`.

``fabfile.py`` imports these (a user's own fabfile can too). Each task parses
its flags, calls the library and exits with the run's status (0 in sync, 1 a
host failed, 2 bad input, 130/143 interrupted).

Under ``fab -H web1,deploy@web2:2222 sync`` Fabric calls the task once per
host, and would stop at the first failing one. The first call syncs every
``-H`` host in one run instead (user and port typed there honored, one
summary, one --json report); the calls for the other hosts then have
nothing left to do.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from fabric import Connection
from fabric.tasks import Task
from invoke import Exit, task

from . import cli
from .constants import DEFAULT_CONFIG_NAME

HELP = {
    "config": "config.ini to use (default: $SYNCTASKS_CONFIG, else the one next to the fabfile)",
    "only": "hosts to sync: names, IPs or shell patterns, comma-separated",
    "shard": "sync only shard K of N of the selected hosts, as K/N (stable: by a hash of the host name)",
    "dry_run": "show what would change (rsync --itemize style), change nothing",
    "delete": "remove remote files under each dest that are not in its src",
    "force": "allow --delete on a dest close to / or the remote home",
    "checksum": "compare file contents (SHA-256) instead of size and mtime",
    "json": "write a machine-readable report of the run to this file",
    "quiet": "print only errors and the final status",
    "verbose": "list changed files; repeat it (-vv, no value) to list unchanged ones too",
}

#: Set by fabfile.py: the config.ini next to it (used when Invoke does not
#: say where the fabfile is).
DEFAULT_CONFIG: list[str | None] = [None]

#: -H runs done in this process: (task, host strings) -> True.
_RUNS: dict[tuple, bool] = {}


class _Task(Task):
    """Fabric's Task with short flags for --verbose and --quiet only (automatic
    short flags would clash: -d for --dry-run or --delete?)."""

    SHORT = {"verbose": "v", "quiet": "q"}

    def arg_opts(self, name, default, taken_names):
        opts = super().arg_opts(name, default, taken_names)
        short = self.SHORT.get(name)
        if short and short not in taken_names:
            opts["names"].append(short)
        return opts


def _task(**kwargs):
    return task(klass=_Task, auto_shortflags=False, **kwargs)


_UNSET = object()


def _config(c, config=_UNSET) -> str | None:
    """--config, else $SYNCTASKS_CONFIG, else config.ini next to the fabfile
    (the user's own fabfile too), else ./config.ini. ``_config(config)``
    alone (no context) skips the fabfile's folder."""
    if config is _UNSET:
        c, config = None, c
    if config or os.environ.get("SYNCTASKS_CONFIG"):
        return config or os.environ["SYNCTASKS_CONFIG"]
    prefix = getattr(getattr(c, "config", None), "_project_prefix", None)
    if prefix:
        return str(Path(prefix) / DEFAULT_CONFIG_NAME)
    return DEFAULT_CONFIG[0]


def cli_hosts(argv: list[str] | None = None) -> list[str] | None:
    """The host strings of fab's -H / --hosts, as typed."""
    argv = sys.argv[1:] if argv is None else argv
    value = None
    index = 0
    while index < len(argv):
        arg = argv[index]
        if arg in ("-H", "--hosts") and index + 1 < len(argv):
            value = argv[index + 1]
            index += 2
            continue
        if arg.startswith("--hosts="):
            value = arg.split("=", 1)[1]
        elif arg.startswith("-H") and len(arg) > 2 and not arg.startswith("-H-"):
            value = arg[2:].removeprefix("=")
        index += 1
    return [h.strip() for h in value.split(",") if h.strip()] if value else None


def _hosts(c, name: str) -> tuple[list[str] | None, bool]:
    """(-H host strings this run covers, whether this call runs it)."""
    if not isinstance(c, Connection):
        return None, True
    specs = cli_hosts()
    typed = set()
    for spec in specs or []:
        try:
            typed.add(cli.split_host_string(spec)[1])
        except Exception:
            typed.add(spec)
    if c.original_host not in typed:
        # Not from -H (a task calling ours with its own Connection): that host alone.
        return [c.original_host], True
    key = (name, tuple(specs))
    if key in _RUNS:
        return specs, False
    _RUNS[key] = True
    return specs, True


def _only(c, only: str | None) -> str | None:
    """``--only``, or under ``fab -H`` the host of this call's Connection."""
    if isinstance(c, Connection) and not only:
        return c.original_host
    return only


def _finish(status: int) -> None:
    if status:
        raise Exit(code=status)


@_task(help=HELP, incrementable=["verbose"])
def sync(c, config=None, only=None, shard=None, dry_run=False, delete=False, force=False, checksum=False, json=None,
         quiet=False, verbose=0):
    """Sync every host's mappings (hosts/<ip>.json)."""
    # The run's own connections are paramiko's alone, as the console
    # script's (a Fabric Connection costs ~0.1 s more per host; ProxyJump
    # hosts still get one).
    hosts, first = _hosts(c, "sync")
    if first:
        _finish(cli.run_sync(_config(c, config), only=only, hosts=hosts, shard=shard, dry_run=dry_run,
                             delete=delete or None, checksum=checksum, json_path=json, quiet=quiet, verbose=verbose,
                             force=force, lightweight=True))


@_task(help={k: HELP[k] for k in ("config", "only", "shard", "delete", "checksum", "json", "quiet", "verbose")},
       incrementable=["verbose"])
def plan(c, config=None, only=None, shard=None, delete=False, checksum=False, json=None, quiet=False, verbose=0):
    """Show what sync would do, per file, without changing anything."""
    hosts, first = _hosts(c, "plan")
    if first:
        _finish(cli.run_sync(_config(c, config), only=only, hosts=hosts, shard=shard, dry_run=True,
                             delete=delete or None, checksum=checksum, json_path=json, quiet=quiet, verbose=verbose,
                             lightweight=True))


@_task(help={"config": HELP["config"]})
def validate(c, config=None):
    """Check the three input files; connect to nothing."""
    _finish(cli.run_validate(_config(c, config)))


@_task(help={"config": HELP["config"], "only": "hosts to check"})
def check(c, config=None, only=None):
    """Connect to every host: verify its host key and the login."""
    hosts, first = _hosts(c, "check")
    if first:
        _finish(cli.run_check(_config(c, config), only, hosts=hosts))


@_task()
def version(c):
    """Print synctasks' version (fab --version prints Fabric's)."""
    from . import __version__

    print(f"synctasks {__version__}")


@task(help={**{k: HELP[k] for k in ("config", "only", "delete", "force", "checksum", "quiet")},
            "verbose": "also print every round and each changed file",
            "exclude": "gitignore-style pattern never sent (repeatable)",
            "json": "append one JSON object per round to this file (JSON Lines)"},
      iterable=["exclude"], auto_shortflags=False)
def watch(c, config=None, only=None, delete=False, force=False, checksum=False, exclude=None, json=None,
          quiet=False, verbose=False):
    """Sync, then keep the hosts following local edits (Ctrl-C to stop)."""
    from . import watch as watching

    _finish(watching.run_watch(_config(c, config), only=_only(c, only), delete=delete or None, checksum=checksum,
                               exclude=exclude or (), json_path=json, quiet=quiet, verbose=verbose, force=force))
