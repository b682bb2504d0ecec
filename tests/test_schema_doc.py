"""docs/schema.json is the published wire contract: it must equal what `leakseg schema` generates."""

import json
import subprocess
import sys
from pathlib import Path

from leakseg.schema import ERROR_STATUS, ErrorCode, json_schema

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_committed_schema_equals_the_generated_one():
    committed = (DOCS / "schema.json").read_text()
    generated = subprocess.run([sys.executable, "-m", "leakseg.cli", "schema"], capture_output=True, text=True,
                               check=True).stdout
    assert committed == generated, "docs/schema.json is stale: run `leakseg schema -o docs/schema.json`"
    assert json.loads(committed) == json_schema()


def test_api_doc_lists_every_error_code_with_its_status():
    api = (DOCS / "API.md").read_text()
    for code in ErrorCode:
        assert f"| `{code.value}` | {ERROR_STATUS[code]} |" in api, code
