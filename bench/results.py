"""What the benches share for their results: JSON written atomically, times as text."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def write_json(path: Path | None, result: Mapping[str, Any]) -> None:
    """Write ``result`` to ``path`` (if given) by rename, so a run stopped midway leaves the
    last complete file, never half of one."""
    if path is None:
        return
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(result, indent=2, default=float) + "\n")
    tmp.replace(path)


def iso_minutes(ts: float) -> str:
    """Epoch seconds as ISO 8601 UTC, to the minute."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="minutes")
