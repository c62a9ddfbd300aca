"""Short content hashes that name caches, fold tables and runs (a bottom module: it imports nothing of the pipeline)."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def stable_hash(obj: Any, length: int = 16) -> str:
    """Short sha256 of a JSON-serialisable object with sorted keys."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]
