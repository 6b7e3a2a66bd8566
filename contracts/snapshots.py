"""JSON Schema snapshots of every event, committed under contracts/schemas/ and checked by a test.

After an intended, compatible change (or a new version), refresh them with `python -m contracts.snapshots`
and commit the diff; the test fails on any unreviewed change.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from contracts.envelope import EventType, event_json_schema
from contracts.orders import EVENT_TYPES

SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"


def snapshot_path(event_type: EventType) -> Path:
    return SCHEMA_DIR / f"{event_type.type}.schema.json"


def render_schema(event_type: EventType) -> str:
    schema: dict[str, Any] = event_json_schema(event_type)
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def write_snapshots() -> list[Path]:
    SCHEMA_DIR.mkdir(exist_ok=True)
    written = []
    for event_type in EVENT_TYPES.values():
        path = snapshot_path(event_type)
        path.write_text(render_schema(event_type))
        written.append(path)
    return written


if __name__ == "__main__":
    for written_path in write_snapshots():
        print(written_path)
