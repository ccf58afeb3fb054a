"""The version stamp every verb's JSON output carries, and the schema that describes it.

``interp_assert/output.schema.json`` ships beside ``spec.schema.json``. A consumer reads
``schema_version`` first; it grows by one whenever a key is removed or changes meaning (new keys
may appear without a new version). ``kind`` says which verb wrote the document. Nothing here
imports torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
SCHEMA_PATH = Path(__file__).parent / "output.schema.json"
KINDS = ("audit", "audit-set", "measure", "track", "track-checkpoint", "track-state")


def versioned(kind: str, document: dict[str, Any]) -> dict[str, Any]:
    """``document`` with ``schema_version`` and ``kind`` first."""
    assert kind in KINDS, kind
    return {"schema_version": SCHEMA_VERSION, "kind": kind, **document}


def load_schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    return loaded
