"""The logger module: two channels, secrets masked, remote text escaped, no
record lost (issue 11), with the real handlers."""

from __future__ import annotations

import logging
import sys

import pytest

from synctasks import logger as synclog
from synctasks.inputs import load_settings

SECRET = "S3cret-In-A-Message"
HOSTILE = "x\n\x1b]0;PWNED\x07\x1b[2J"


class Console(logging.Handler):
    """The console handler the CLI installs, in the small: writes to stderr."""

    def emit(self, record):
        try:
            print(f"{record.levelname.lower()}: {record.getMessage()}", file=sys.stderr)
        except Exception:
            self.handleError(record)


@pytest.fixture
def logs(tmp_path):
    (tmp_path / "config.ini").write_text("")
    settings = load_settings(tmp_path / "config.ini", env={})
    synclog.setup_logging(settings, Console())
    yield settings
    synclog.close_logging()
    synclog._secrets.discard(SECRET)


def read(settings) -> tuple[str, str]:
    for handler in logging.getLogger(synclog.ROOT).handlers:
        handler.flush()
    return settings.info_log.read_text(), settings.error_log.read_text()


def test_secret_masked_everywhere_whatever_carries_it(logs, capsys):
    synclog.add_secret(SECRET)
    log = synclog.get_logger("127.0.0.2")
    log.error("login refused for user %r: check the passkey", SECRET)  # an auth error echoing it
    log.warning("remote said: sudo: %s: command not found", SECRET)  # a remote error echoing it
    log.error("connect kwargs %r", {"password": SECRET, "look_for_keys": False})  # a repr
    try:
        raise RuntimeError(f"boom with {SECRET}")
    except RuntimeError:
        log.exception("unexpected error")  # a traceback
    info, error = read(logs)
    console = capsys.readouterr().err
    for text in (info, error, console):
        assert SECRET not in text
        assert text.count(synclog.MASK) >= 3
    assert "{'password': '********', 'look_for_keys': False}" in info
    assert "    | RuntimeError: boom with ********" in error


def test_remote_text_is_escaped_and_cannot_forge_a_line(logs, capsys):
    log = synclog.get_logger("127.0.0.2")
    log.error("cannot remove %s: Permission denied", HOSTILE + "\n2026-01-01 00:00:00,000 INFO    [h] forged")
    try:
        raise OSError(f"bad name {HOSTILE}\nINFO forged too")
    except OSError:
        log.exception("unexpected error")
    info, error = read(logs)
    console = capsys.readouterr().err
    for text in (info, error, console):
        assert "\x1b" not in text and "\x07" not in text
        assert "x\\n\\x1b]0;PWNED\\x07\\x1b[2J" in text
        assert not any(line.startswith("2026-01-01") or line.startswith("INFO forged") for line in text.splitlines())
    # one record, one line (a traceback's lines are marked as its own)
    records = [line for line in error.splitlines() if not line.startswith("    | ")]
    assert len(records) == 2, error


def test_non_utf8_names_never_lose_a_record(logs, capsys):
    name = b"caf\xe9-\xff.txt".decode("utf-8", "surrogateescape")  # as os.listdir gives it
    log = synclog.get_logger("127.0.0.2")
    log.warning("symlink skipped: %s", name)
    log.debug("sent %s", name)
    info, error = read(logs)
    err = capsys.readouterr().err
    assert "Logging error" not in err
    assert "symlink skipped: caf\\xe9-\\xff.txt" in error and "symlink skipped: caf\\xe9-\\xff.txt" in err
    assert "sent caf\\xe9-\\xff.txt" in info and "symlink skipped: caf\\xe9-\\xff.txt" in info


def test_escape_keeps_printable_text_and_is_idempotent():
    assert synclog.escape("café / 日本 $x 'q' \\n") == "café / 日本 $x 'q' \\n"
    once = synclog.escape(HOSTILE + "\u202e\t")
    assert once == "x\\n\\x1b]0;PWNED\\x07\\x1b[2J\\u202e\\t"
    assert synclog.escape(once) == once
