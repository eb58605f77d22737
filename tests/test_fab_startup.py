"""`fab`'s fixed cost (issue 10): `fab --list` and `fab TASK --help` load
none of the engine, and a task whose call is the last thing the `fab`
process would do ends that process itself once everything is flushed, as
the console script does, with the status Fabric would have given; any other
call returns or raises as before. Real fab processes; no SSH server needed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from synctasks import __version__

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
VERSION = f"synctasks {__version__}"

#: The `fab` console script, plus an atexit hook: it runs only when the
#: interpreter exits the ordinary way (os._exit skips it).
FAB = ("import atexit, sys\n"
       "atexit.register(lambda: print('teardown ran', file=sys.stderr))\n"
       "from fabric.main import program\n"
       "sys.exit(program.run())\n")


def _env() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}:{env.get('PATH', '')}"
    env.pop("SYNCTASKS_CONFIG", None)
    return env


def fab(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", FAB, *args], cwd=cwd, capture_output=True, text=True,
                          env=_env(), timeout=60)


def test_list_and_task_help_load_none_of_the_engine():
    code = ("import sys\nfrom fabric.main import program\n"
            "program.run(sys.argv[1:], exit=False)\n"
            "print(sorted(m for m in sys.modules if m.startswith('synctasks')))\n")
    for argv in (["fab", "--list"], ["fab", "sync", "--help"]):
        done = subprocess.run([sys.executable, "-c", code, *argv], cwd=ROOT, capture_output=True, text=True,
                              env=_env(), timeout=60)
        assert done.returncode == 0, done.stderr
        loaded = done.stdout.strip().splitlines()[-1]
        assert loaded == "['synctasks', 'synctasks.constants', 'synctasks.tasks']", (argv, loaded)
    listed = fab("--list")
    assert listed.returncode == 0 and "sync       Sync every host's mappings" in listed.stdout
    assert "teardown ran" in listed.stderr  # no task ran: Fabric's own exit


def test_last_task_ends_the_process_with_fabrics_status(tmp_path):
    done = fab("version")
    assert (done.returncode, done.stdout, done.stderr) == (0, VERSION + "\n", "")
    missing = str(tmp_path / "missing.ini")
    failed = fab("validate", "--config", missing)
    assert failed.returncode == 2 and "config.ini not found" in failed.stderr
    assert "teardown ran" not in failed.stderr
    # Not the last task: it returns, and the next one ends the process.
    both = fab("version", "validate", "--config", missing)
    assert both.returncode == 2 and both.stdout == VERSION + "\n" and "teardown ran" not in both.stderr
    # A failing task that is not the last stops the run as Fabric always did.
    stopped = fab("validate", "--config", missing, "version")
    assert stopped.returncode == 2 and stopped.stdout == "" and "teardown ran" in stopped.stderr


def test_a_task_run_per_host_runs_for_every_host():
    done = fab("-H", "127.0.0.2,127.0.0.3", "version")
    assert done.returncode == 0 and done.stdout == (VERSION + "\n") * 2, done.stderr
    assert "teardown ran" not in done.stderr  # the last host's call ended it


def test_our_task_called_by_yours_returns_to_it(tmp_path):
    (tmp_path / "fabfile.py").write_text(
        "from invoke import task\n"
        "from synctasks.tasks import version\n\n\n"
        "@task\n"
        "def release(c):\n"
        "    version(c)\n"
        "    print('after version')\n")
    done = fab("release", cwd=tmp_path)
    assert done.returncode == 0 and done.stdout == f"{VERSION}\nafter version\n", done.stderr
    assert "teardown ran" in done.stderr


def test_program_run_in_process_returns():
    code = ("from fabric.main import program\n"
            "program.run(['fab', 'version'], exit=False)\n"
            "print('returned')\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=_env(),
                          timeout=60)
    assert done.returncode == 0 and done.stdout == f"{VERSION}\nreturned\n", done.stderr


def test_sync_ends_fab_with_its_status_and_a_second_sync_still_runs(project, server, remote):
    from conftest import MAIN_HOSTS, UNREACHABLE_HOST

    project.file("site/a.txt", "a")
    project.add_host(server, MAIN_HOSTS[0], [{"src": "site", "dest": f"{remote}/www"}])
    dead = project.add_host(server, UNREACHABLE_HOST, [{"src": "site", "dest": f"{remote}/dead"}], trust=False)
    dead["port"] = server.port
    project.write()
    config = ("--config", str(project.config_path))
    done = fab("sync", "--quiet", *config, "--only", MAIN_HOSTS[0])
    assert done.returncode == 0 and "teardown ran" not in done.stderr, done.stderr
    assert done.stdout.splitlines()[-1].startswith("sync done: 1 host(s) in sync (1 changed)")
    assert (remote / "www/a.txt").read_text() == "a"
    failed = fab("sync", "--quiet", *config)
    assert failed.returncode == 1 and "teardown ran" not in failed.stderr
    # Without -H, a second sync on the command line is a run of its own.
    twice = fab("plan", "--quiet", *config, "--only", MAIN_HOSTS[0], "sync", "--quiet", *config,
                "--only", MAIN_HOSTS[0])
    assert twice.returncode == 0 and "teardown ran" not in twice.stderr, twice.stderr
    assert [line.split(":")[0] for line in twice.stdout.splitlines()] == ["dry run", "sync done"]
    # Under -H, the first call runs every host; the later ones find it done.
    hosts = fab("-H", f"{MAIN_HOSTS[0]},{UNREACHABLE_HOST}", "sync", "--quiet", *config)
    assert hosts.returncode == 1 and "teardown ran" not in hosts.stderr
    lines = hosts.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("sync FAILED on 1 of 2 host(s)"), hosts.stdout
