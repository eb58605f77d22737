"""The shared logger module: two log channels, the host on every line, and no
secret at any level.

- info log: every record at or above ``[logging] level`` (DEBUG by default);
- error log: warnings and errors only;
- both rotate by ``max_bytes`` / ``backups``.

Code logs through :func:`get_logger` (``get_logger(host)`` tags each line with
the host). Passwords registered with :func:`add_secret` are masked in every
record before any handler sees it.
"""

from __future__ import annotations

import logging
import logging.handlers
import threading
from pathlib import Path

ROOT = "synctasks"
FORMAT = "%(asctime)s %(levelname)-7s [%(host)s] %(name)s: %(message)s"
MASK = "********"

_secrets: set[str] = set()
_lock = threading.Lock()


def add_secret(secret: str | None) -> None:
    """Never let ``secret`` reach a log line, whatever logs it."""
    if secret:
        with _lock:
            _secrets.add(secret)


def redact(text: str) -> str:
    for secret in sorted(_secrets, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


class _HostAndSecrets(logging.Filter):
    """Adds ``host`` to records that have none, and masks secrets."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "host"):
            record.host = "-"
        if _secrets:
            record.msg = redact(record.getMessage())
            record.args = None
        return True


class HostAdapter(logging.LoggerAdapter):
    def process(self, msg, kwargs):
        kwargs.setdefault("extra", {})["host"] = self.extra["host"]
        return msg, kwargs


def get_logger(host: str | None = None, name: str = ROOT) -> logging.LoggerAdapter:
    """A logger whose lines carry ``host`` (or '-' for run-wide lines)."""
    return HostAdapter(logging.getLogger(name), {"host": host or "-"})


def _rotating(path: Path, level: int, max_bytes: int, backups: int) -> logging.Handler:
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.handlers.RotatingFileHandler(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(_HostAndSecrets())
    handler.set_name("synctasks-file")
    return handler


def setup_logging(settings, console: logging.Handler | None = None) -> None:
    """Attach the two file channels (and an optional console handler).

    Calling it again replaces the handlers of an earlier call, so a library
    user can sync twice in one process without doubled lines.
    """
    root = logging.getLogger(ROOT)
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    root.setLevel(logging.DEBUG)
    root.propagate = False
    root.addHandler(
        _rotating(settings.info_log, getattr(logging, settings.level), settings.max_bytes, settings.backups)
    )
    root.addHandler(_rotating(settings.error_log, logging.WARNING, settings.max_bytes, settings.backups))
    if console is not None:
        console.addFilter(_HostAndSecrets())
        root.addHandler(console)
    # paramiko's own warnings (e.g. auth failures) belong in our logs too.
    paramiko_log = logging.getLogger("paramiko")
    paramiko_log.setLevel(logging.WARNING)
    for handler in root.handlers[:2]:
        if handler not in paramiko_log.handlers:
            paramiko_log.addHandler(handler)


def close_logging() -> None:
    for name in (ROOT, "paramiko"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
            handler.close()
