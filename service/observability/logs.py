"""Log formatting: one line per record, plain `key=value` text by default, JSON objects with GENAI_LOG_JSON.

Structured fields travel on the record as `extra={"fields": {...}}` (the request middleware puts the
request id, route, status, duration and token counts there).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from service.config import Settings

_HANDLER_NAME = "genai-service"


class JsonFormatter(logging.Formatter):
    """`{"ts", "level", "logger", "message", ...fields}`: one JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            data.update(fields)
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """The usual `time level logger: message`, followed by the structured fields as `key=value`."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if not message.isprintable():  # a request path with %0d%0a or %00 must not start a forged line
            record.msg, record.args = _escaped(message), None
        line = super().format(record)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            extras = " ".join(f"{k}={_text_value(v)}" for k, v in fields.items() if v is not None)
            if extras:
                head, sep, tail = line.partition("\n")  # keep a traceback after the fields
                line = f"{head} {extras}{sep}{tail}"
        return line


def _escaped(text: str) -> str:
    """Control characters (CR, LF, NUL, ...) as `\r`, `\n`, `\x00`: one record stays one line."""
    return "".join(ch if ch.isprintable() or ch == " " else json.dumps(ch)[1:-1] for ch in text)


def _text_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return json.dumps(text) if (" " in text or '"' in text or not text or not text.isprintable()) else text


def configure_logging(settings: Settings) -> None:
    """Route every log record (uvicorn's too) through one stderr handler, formatted as the settings ask. Idempotent."""
    root = logging.getLogger()
    handler = logging.StreamHandler()
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JsonFormatter() if settings.log_json else TextFormatter())
    # Replace handlers that basicConfig or an earlier call installed, so each record is written once.
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
