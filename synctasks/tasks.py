"""Invoke/Fabric tasks: thin wrappers over :mod:`synctasks.cli`.

``fabfile.py`` imports these. Each task parses its flags, calls the library
and exits with the run's status (0 in sync, 1 a host failed, 2 bad input).
Under ``fab -H host1,host2 sync`` the task runs once per host with a
Connection as its context; it then syncs just that host from its mapper file.
"""

from __future__ import annotations

import os

from fabric import Connection
from invoke import Exit, task

from . import cli

HELP = {
    "config": "config.ini to use (default: the one next to fabfile.py, or $SYNCTASKS_CONFIG)",
    "only": "hosts to sync: names, IPs or shell patterns, comma-separated",
    "dry_run": "show what would change (rsync --itemize style), change nothing",
    "delete": "remove remote files under each dest that are not in its src",
    "force": "allow --delete on a dest close to / or the remote home",
    "checksum": "compare file contents (SHA-256) instead of size and mtime",
    "json": "write a machine-readable report of the run to this file",
    "quiet": "print only errors and the final status",
    "verbose": "also print a line per file, skipped ones included",
}

#: Set by fabfile.py: the config.ini next to it.
DEFAULT_CONFIG: list[str | None] = [None]


def _config(config: str | None) -> str | None:
    return config or os.environ.get("SYNCTASKS_CONFIG") or DEFAULT_CONFIG[0]


def _only(c, only: str | None) -> str | None:
    # fab -H web1,web2 sync: Fabric hands each host's Connection in turn.
    if isinstance(c, Connection) and not only:
        return c.original_host
    return only


def _finish(status: int) -> None:
    if status:
        raise Exit(code=status)


@task(help=HELP, auto_shortflags=False)
def sync(c, config=None, only=None, dry_run=False, delete=False, force=False, checksum=False, json=None,
         quiet=False, verbose=False):
    """Sync every host's mappings (hosts/<ip>.json) over SCP."""
    _finish(cli.run_sync(_config(config), only=_only(c, only), dry_run=dry_run, delete=delete or None,
                         checksum=checksum, json_path=json, quiet=quiet, verbose=verbose, force=force))


@task(help={k: HELP[k] for k in ("config", "only", "delete", "checksum", "json", "verbose")}, auto_shortflags=False)
def plan(c, config=None, only=None, delete=False, checksum=False, json=None, verbose=False):
    """Show what sync would do, per file, without changing anything."""
    _finish(cli.run_sync(_config(config), only=_only(c, only), dry_run=True, delete=delete or None,
                         checksum=checksum, json_path=json, verbose=verbose))


@task(help={"config": HELP["config"]}, auto_shortflags=False)
def validate(c, config=None):
    """Check the three input files; connect to nothing."""
    _finish(cli.run_validate(_config(config)))


@task(help={"config": HELP["config"], "only": "hosts to check"}, auto_shortflags=False)
def check(c, config=None, only=None):
    """Connect to every host: verify its host key and the login."""
    _finish(cli.run_check(_config(config), _only(c, only)))


@task(help={**{k: HELP[k] for k in ("config", "only", "delete", "force", "checksum", "quiet", "verbose")},
            "exclude": "gitignore-style pattern never sent (repeatable)",
            "json": "append one JSON object per round to this file (JSON Lines)"},
      iterable=["exclude"], auto_shortflags=False)
def watch(c, config=None, only=None, delete=False, force=False, checksum=False, exclude=None, json=None,
          quiet=False, verbose=False):
    """Sync, then keep the hosts following local edits (Ctrl-C to stop)."""
    from . import watch as watching

    _finish(watching.run_watch(_config(config), only=_only(c, only), delete=delete or None, checksum=checksum,
                               exclude=exclude or (), json_path=json, quiet=quiet, verbose=verbose, force=force))
