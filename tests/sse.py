"""Server-sent events as the tests read them: (event name, decoded JSON data) per event."""

from __future__ import annotations

import json
from typing import Any


def parse_sse(raw: str) -> list[tuple[str, Any]]:
    """Every event in `raw` with its name ("message" when unnamed) and its data lines joined and decoded."""
    events = []
    for block in raw.replace("\r\n", "\n").split("\n\n"):
        name, data = "message", []
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
        if data:
            events.append((name, json.loads("\n".join(data))))
    return events
