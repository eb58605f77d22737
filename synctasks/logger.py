"""The shared logger module: two log channels, the host on every line, and no
secret at any level.

- info log: every record at or above ``[logging] level`` (DEBUG by default);
- error log: warnings and errors only;
- both rotate by ``max_bytes`` / ``backups``.

Code logs through :func:`get_logger` (``get_logger(host)`` tags each line with
the host). Every handler (the two files and the console) gets each record
cleaned once, before it formats it:

- passwords registered with :func:`add_secret` are masked;
- control characters are escaped (:func:`escape`): a remote file named
  ``x\n\x1b]0;PWNED\x07`` shows as ``x\\n\\x1b]0;PWNED\\x07``, so remote text can
  neither drive the operator's terminal nor forge a log line;
- undecodable bytes of non-UTF-8 file names (``os.fsdecode``'s surrogates)
  show as ``\\xNN`` instead of losing the record to a ``--- Logging error ---``.
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


def redact_data(data):
    """``data`` (JSON-like: dicts, lists, strings) with secrets masked in every string."""
    if not _secrets:
        return data
    if isinstance(data, str):
        return redact(data)
    if isinstance(data, dict):
        return {redact_data(k): redact_data(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [redact_data(v) for v in data]
    return data


def _escape_char(char: str) -> str:
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # a byte os.fsdecode could not decode
        return f"\\x{code - 0xDC00:02x}"
    return repr(char)[1:-1]


def escape(text: str) -> str:
    """``text`` on one printable line: control and format characters (newline,
    ESC, BEL, bidi overrides...) as Python escapes, undecodable bytes as \\xNN.

    Backslashes stay as they are, so escaping twice changes nothing.
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c == " " else _escape_char(c) for c in text)


def clean(text: str) -> str:
    """What a log line may show of ``text``: secrets masked, then escaped."""
    return escape(redact(text) if _secrets else text)


class _HostAndSecrets(logging.Filter):
    """Adds ``host`` to records that have none, masks secrets and escapes
    control characters (every handler carries this filter; a record that
    reaches several handlers is cleaned again, which changes nothing)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.host = escape(str(getattr(record, "host", None) or "-"))
        record.msg = clean(record.getMessage())
        record.args = None
        return True


class SafeFormatter(logging.Formatter):
    """The file channels' format; a traceback is masked and escaped line by
    line and indented, so no line of it can pass for a record of its own."""

    def formatException(self, ei) -> str:
        return self._indented(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return self._indented(super().formatStack(stack_info))

    @staticmethod
    def _indented(text: str) -> str:
        return "\n".join("    | " + clean(line) for line in text.splitlines())


class HostAdapter(logging.LoggerAdapter):
    def process(self, msg, kwargs):
        kwargs.setdefault("extra", {})["host"] = self.extra["host"]
        return msg, kwargs


def get_logger(host: str | None = None, name: str = ROOT) -> logging.LoggerAdapter:
    """A logger whose lines carry ``host`` (or '-' for run-wide lines)."""
    return HostAdapter(logging.getLogger(name), {"host": host or "-"})


def _rotating(path: Path, level: int, max_bytes: int, backups: int) -> logging.Handler:
    path.parent.mkdir(parents=True, exist_ok=True)
    # backslashreplace: a character the filter let through is still written,
    # never the cause of a lost record.
    handler = logging.handlers.RotatingFileHandler(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8",
                                                   errors="backslashreplace")
    handler.setLevel(level)
    handler.setFormatter(SafeFormatter(FORMAT))
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
