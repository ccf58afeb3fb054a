"""Write the spec JSON Schema for editors: ``python -m interp_assert.schema``."""

from __future__ import annotations

import json
from pathlib import Path

from interp_assert.spec import spec_json_schema

SCHEMA_PATH = Path(__file__).parent / "spec.schema.json"

if __name__ == "__main__":
    SCHEMA_PATH.write_text(json.dumps(spec_json_schema(), indent=2, sort_keys=True) + "\n")
    print(SCHEMA_PATH)
