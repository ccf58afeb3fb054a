"""Write what is generated from the property registry for editors: the spec JSON Schema
(``python -m interp_assert.spec.schema``). :func:`property_table` is the summary table of
``docs/properties.md``, which ``python scripts/gen_docs.py`` writes with the rest of that page."""

from __future__ import annotations

import json
from pathlib import Path

from interp_assert.properties import BUILTIN, tag_of
from interp_assert.spec import spec_json_schema

SCHEMA_PATH = Path(__file__).parent.parent / "spec.schema.json"


def property_table() -> str:
    """The table of built-in properties (keys, passes when), one row per class, in registry order."""
    rows = ["| property | keys | passes when |", "| --- | --- | --- |"]
    for cls in BUILTIN:
        keys, passes = cls.reference
        rows.append(f"| `{tag_of(cls)}` | {keys} | {passes} |")
    return "\n".join(rows)


if __name__ == "__main__":
    SCHEMA_PATH.write_text(json.dumps(spec_json_schema(), indent=2, sort_keys=True) + "\n")
    print(SCHEMA_PATH)
