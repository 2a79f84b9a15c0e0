"""docs/schemas is generated from the message types: a change to a type must regenerate it
(`make schema`), so the documented contract never drifts from the code."""

from __future__ import annotations

from pathlib import Path

from trainmaster.schemas import write_schemas

DOCS = Path(__file__).resolve().parents[2] / "docs" / "schemas"


def test_docs_schemas_match_the_message_types(tmp_path: Path) -> None:
    generated = {p.name: p.read_text() for p in write_schemas(tmp_path)}
    documented = {p.name: p.read_text() for p in DOCS.glob("*.schema.json")}
    stale = sorted(name for name in generated if documented.get(name) != generated[name])
    extra = sorted(set(documented) - set(generated))
    assert not stale and not extra, f"run `make schema`: stale {stale}, no longer generated {extra}"
