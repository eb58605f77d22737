"""Invoke/Fabric tasks: thin wrappers over :mod:`synctasks.cli`.

``fabfile.py`` imports these (a user's own fabfile can too). Each task parses
its flags, calls the library and exits with the run's status (0 in sync, 1 a
host failed, 2 bad input, 130/143 interrupted).

Under ``fab -H web1,deploy@web2:2222 sync`` Fabric calls the task once per
host, and would stop at the first failing one. The first call syncs every
``-H`` host in one run instead (user and port typed there honored, one
summary, one --json report); the calls for the other hosts then have
nothing left to do.

Start-up cost (``fab sync`` against the console script): importing this
module imports nothing of synctasks beyond its constants (``fab --list`` and
``fab sync --help`` need no more; the task bodies import :mod:`synctasks.cli`),
and a task whose call is the last thing the ``fab`` process would do ends
that process itself once everything is flushed, as the console script does
(see :func:`_finish`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from fabric import Connection
from fabric.tasks import Task
from invoke import Exit, task
from invoke.executor import Executor
from invoke.program import Program

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
    from . import cli

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


def _covered(c, name: str) -> bool:
    """Under ``fab -H``, whether a call of task ``name`` ran every ``-H``
    host (the calls for the other hosts have nothing left to do)."""
    return isinstance(c, Connection) and (name, tuple(cli_hosts() or ())) in _RUNS


def _finish(status: int, once: bool = False) -> None:
    """End the task with ``status``: 0 returns, else ``Exit(code=status)``.

    When this call is the last thing the ``fab`` process would do (see
    :func:`_last_act_of_fab`; ``once``: this call ran every ``-H`` host),
    end the process here with that same status, as the console script does:
    flush, close the logs, ``os._exit``. Fabric would return and exit
    through the interpreter's teardown of all that Fabric, Invoke, paramiko
    and cryptography loaded: ~0.1 s spent on nothing (the console script has
    always skipped it).
    """
    if _last_act_of_fab(sys._getframe(1), once) and _flushed():
        os._exit(status)
    if status:
        raise Exit(code=status)


def _last_act_of_fab(body, once: bool = False) -> bool:
    """Whether ``body`` (the frame of a task's body) was called straight by
    the program's executor as its last call, and the program was run by the
    ``__main__`` module with ``exit=True`` (the ``fab`` script, which exits
    when it returns, or ``python -m fabric``): Invoke's ``Task.__call__`` <-
    ``Executor.execute`` <- ``Program.execute`` <- ``Program.run`` <-
    ``__main__``. ``once``: later calls of the same task with the same
    arguments count as nothing (under ``fab -H``, the calls after the one
    that ran every host, which find it done).

    Anything else or unexpected (a task of yours calling ours, a program run
    in-process, another version of Invoke) says False: the task then returns
    or raises as it always did.
    """
    try:
        called = body.f_back
        task = called.f_locals.get("self")
        if called.f_code is not Task.__call__.__code__ or task.body.__code__ is not body.f_code:
            return False
        executor = called.f_back
        if executor.f_code is not Executor.execute.__code__:
            return False
        call, calls = executor.f_locals["call"], executor.f_locals["calls"]
        if call.task is not task or call.autoprint:
            return False
        position = next(index for index, other in enumerate(calls) if other is call)
        for other in calls[position + 1:]:
            if not once or other.task is not task or other.args != call.args or other.kwargs != call.kwargs:
                return False
        execute = executor.f_back
        program = execute.f_back
        if execute.f_code is not Program.execute.__code__ or program.f_code is not Program.run.__code__ \
                or program.f_locals.get("exit") is not True:
            return False
        main = program.f_back
        return main.f_code.co_name == "<module>" and main.f_globals.get("__name__") == "__main__"
    except Exception:
        return False


def _flushed() -> bool:
    """Flush what the process wrote and close the logs; False if stdout or
    stderr cannot take it (the interpreter's own exit then reports it, as
    it would have)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            return False
    import logging

    logging.shutdown()
    return True


@_task(help=HELP, incrementable=["verbose"])
def sync(c, config=None, only=None, shard=None, dry_run=False, delete=False, force=False, checksum=False, json=None,
         quiet=False, verbose=0):
    """Sync every host's mappings (hosts/<ip>.json)."""
    # The run's own connections are paramiko's alone, as the console
    # script's (a Fabric Connection costs ~0.1 s more per host; ProxyJump
    # hosts still get one).
    from . import cli

    hosts, first = _hosts(c, "sync")
    status = 0
    if first:
        status = cli.run_sync(_config(c, config), only=only, hosts=hosts, shard=shard, dry_run=dry_run,
                              delete=delete or None, checksum=checksum, json_path=json, quiet=quiet, verbose=verbose,
                              force=force, lightweight=True)
    _finish(status, once=_covered(c, "sync"))


@_task(help={k: HELP[k] for k in ("config", "only", "shard", "delete", "checksum", "json", "quiet", "verbose")},
       incrementable=["verbose"])
def plan(c, config=None, only=None, shard=None, delete=False, checksum=False, json=None, quiet=False, verbose=0):
    """Show what sync would do, per file, without changing anything."""
    from . import cli

    hosts, first = _hosts(c, "plan")
    status = 0
    if first:
        status = cli.run_sync(_config(c, config), only=only, hosts=hosts, shard=shard, dry_run=True,
                              delete=delete or None, checksum=checksum, json_path=json, quiet=quiet, verbose=verbose,
                              lightweight=True)
    _finish(status, once=_covered(c, "plan"))


@_task(help={"config": HELP["config"]})
def validate(c, config=None):
    """Check the three input files; connect to nothing."""
    from . import cli

    _finish(cli.run_validate(_config(c, config)))


@_task(help={"config": HELP["config"], "only": "hosts to check"})
def check(c, config=None, only=None):
    """Connect to every host: verify its host key and the login."""
    from . import cli

    hosts, first = _hosts(c, "check")
    status = 0
    if first:
        status = cli.run_check(_config(c, config), only, hosts=hosts)
    _finish(status, once=_covered(c, "check"))


@_task()
def version(c):
    """Print synctasks' version (fab --version prints Fabric's)."""
    from . import __version__

    print(f"synctasks {__version__}")
    _finish(0)


@task(help={**{k: HELP[k] for k in ("config", "only", "delete", "force", "checksum", "quiet")},
            "verbose": "also print every round and each changed file",
            "exclude": "gitignore-style pattern never sent (repeatable)",
            "json": "append one JSON object per round to this file (JSON Lines)"},
      iterable=["exclude"], auto_shortflags=False)
def watch(c, config=None, only=None, delete=False, force=False, checksum=False, exclude=None, json=None,
          quiet=False, verbose=False):
    """Sync, then keep the hosts following local edits (Ctrl-C to stop)."""
    from . import watch as watching

    status = watching.run_watch(_config(c, config), only=_only(c, only), delete=delete or None, checksum=checksum,
                                exclude=exclude or (), json_path=json, quiet=quiet, verbose=verbose, force=force)
    # Fabric's own exit, not _finish's early one: start-up and teardown are
    # nothing beside a watch's life.
    if status:
        raise Exit(code=status)
