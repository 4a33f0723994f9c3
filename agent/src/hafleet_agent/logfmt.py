"""The agent's log line formats (``--log-format text|json``; run.py's ``setup_logging``).

Both stamp each line with its time in ISO 8601, UTC, to the millisecond
(``2026-12-05T05:43:28.123Z``). ``text`` is ``TIME LEVEL LOGGER: MESSAGE``. ``json`` is one
object a line: ``ts``, ``level``, ``logger``, ``msg``, then the line's structured fields
(what a caller hands as ``extra={"fields": {...}}``: the audit log's source, method, path,
status...; a field never replaces one of the four), and ``exc`` with a traceback.
docs/monitoring.md, "Logs".

:func:`one_write` lets a batch of lines (the API's audit lines, server/api.py) reach the
log's stream in one write instead of one a line.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def iso_utc(created: float) -> str:
    """``created`` (seconds since the epoch) as ``YYYY-MM-DDTHH:MM:SS.mmmZ``."""
    stamp = datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


class IsoFormatter(logging.Formatter):
    """A formatter whose ``asctime`` is :func:`iso_utc`."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        return iso_utc(record.created)


class JsonFormatter(IsoFormatter):
    """One JSON object a line (see the module's docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, object] = {
            "ts": iso_utc(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            for key, value in fields.items():
                obj.setdefault(str(key), value)
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        return json.dumps(obj, default=str)


@contextlib.contextmanager
def one_write() -> Iterator[None]:
    """Lines logged meanwhile reach each of the root logger's plain stream handlers (run.py's
    ``setup_logging``: stderr) in one write at the end instead of a write (a system call) a
    line: the API's audit lines, up to BOOK_MAX of them at once. Each handler formats its
    lines as always (its filters and level hold); only where they go is held. Handlers of
    other kinds (a file, a test's capture) are left as they are. A failed write at the end
    is dropped, as the handler drops a line it cannot write."""
    held: list[tuple[logging.StreamHandler, object, io.StringIO]] = []
    for h in logging.getLogger().handlers:
        if type(h) is logging.StreamHandler:
            with h.lock:  # type: ignore[union-attr]
                buf = io.StringIO()
                held.append((h, h.stream, buf))
                h.stream = buf
    try:
        yield
    finally:
        for h, stream, buf in held:
            with h.lock:  # type: ignore[union-attr]
                h.stream = stream
                text = buf.getvalue()
                if text:
                    with contextlib.suppress(OSError, ValueError):
                        stream.write(text)  # type: ignore[attr-defined]
                        stream.flush()  # type: ignore[attr-defined]
