"""How the CLI shows the stack's refusals: the stack's words as text, never as console markup."""

from __future__ import annotations

from rich.console import Console

from trainmaster.cli import render
from trainmaster.client import ApiError


def test_a_rule_with_brackets_prints_as_it_is(monkeypatch) -> None:
    console = Console(record=True, width=200)
    monkeypatch.setattr(render, "err_console", console)
    rule = "Expected `str` matching regex '^[a-z0-9][a-z0-9_-]{0,63}$'"
    render.show_error(ApiError({"code": "invalid_request", "message": f"name: {rule}",
                                "details": [{"field": "name", "code": "invalid_type", "message": rule}]}))
    text = console.export_text()
    assert f"error (invalid_request): name: {rule}" in text
    assert f"  - name: {rule} (invalid_type)" in text
