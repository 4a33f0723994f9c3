"""The agent's log line formats (``--log-format text|json``; run.py's ``setup_logging``).

Both stamp each line with its time in ISO 8601, UTC, to the millisecond
(``2026-12-05T05:43:28.123Z``). ``text`` is ``TIME LEVEL LOGGER: MESSAGE``. ``json`` is one
object a line: ``ts``, ``level``, ``logger``, ``msg``, then the line's structured fields
(what a caller hands as ``extra={"fields": {...}}``: the audit log's source, method, path,
status...; a field never replaces one of the four), and ``exc`` with a traceback.
docs/monitoring.md, "Logs".
"""

from __future__ import annotations

import json
import logging
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
