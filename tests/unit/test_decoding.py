"""trainmaster.decoding is the one place that reads msgspec's error wording to make the public
``{field, code, message}`` details.  The first test pins that wording: a msgspec upgrade that
rewords its errors fails here, loudly, instead of silently turning every ``unknown_field`` and
``missing_field`` into ``invalid_type`` (or every field into ``$``) for API callers."""

from __future__ import annotations

import msgspec
import pytest

from trainmaster.decoding import EmptyRequest, RequestError, decode_as, decode_empty
from trainmaster.messages import Violation


class Inner(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    lr: float


class Request(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    count: int = 0
    parameters: dict[str, int] = {}
    items: list[Inner] = []


# body -> msgspec's own message, word for word
MSGSPEC_WORDING = [
    (b'{"name": "a", "x": 1}', "Object contains unknown field `x`"),
    (b"{}", "Object missing required field `name`"),
    (b'{"name": 1}', "Expected `str`, got `int` - at `$.name`"),
    (b'{"name": "a", "parameters": {"a": 1, "b": "x"}}', "Expected `int`, got `str` - at `$.parameters[...]`"),
    (b"[]", "Expected `object`, got `array`"),
    (b'{"name": "a", "items": [{"lr": 1}, {}]}', "Object missing required field `lr` - at `$.items[1]`"),
    (b'{"name": "a", "items": [{"lr": 1, "zz": 2}]}', "Object contains unknown field `zz` - at `$.items[0]`"),
]


@pytest.mark.parametrize(("body", "wording"), MSGSPEC_WORDING)
def test_msgspec_words_its_errors_as_the_decoder_expects(body: bytes, wording: str) -> None:
    with pytest.raises(msgspec.ValidationError) as caught:
        msgspec.json.decode(body, type=Request)
    assert str(caught.value) == wording, f"msgspec {msgspec.__version__} rewords its errors: adapt decoding.py"


def detail(body: bytes, type_: type = Request) -> Violation:
    with pytest.raises(RequestError) as caught:
        decode_as(body, type_, 10_000)
    [violation] = caught.value.body.details
    return violation


@pytest.mark.parametrize(("body", "field", "code"), [
    (b'{"name": "a", "x": 1}', "x", "unknown_field"),
    (b"{}", "name", "missing_field"),
    (b'{"name": 1}', "name", "invalid_type"),
    (b'{"name": "a", "parameters": {"a": 1, "b": "x"}}', "parameters.b", "invalid_type"),  # the key is found
    (b"[]", "$", "invalid_type"),
    (b'{"name": "a", "items": [{"lr": 1}, {}]}', "items[1].lr", "missing_field"),
    (b'{"name": "a", "items": [{"lr": 1, "zz": 2}]}', "items[0].zz", "unknown_field"),
    (b'{"name": "a", "odd.key": 1}', '["odd.key"]', "unknown_field"),
])
def test_each_error_names_the_field_and_its_code(body: bytes, field: str, code: str) -> None:
    violation = detail(body)
    assert (violation.field, violation.code) == (field, code)


def test_the_message_says_the_fix() -> None:
    assert detail(b'{"name": "a", "x": 1}').message.endswith("; remove it or check its spelling")
    assert detail(b"42").message.endswith("send a JSON object ({...}) as the body")


@pytest.mark.parametrize(("body", "code", "violation_code"), [
    (b"", "invalid_json", "empty"),
    (b"{nope", "invalid_json", "invalid_json"),
    (b"x" * 10_001, "request_too_large", "too_large"),
    (b'{"a":' * 200 + b"1" + b"}" * 200, "invalid_request", "too_deep"),
])
def test_bodies_that_are_no_request_at_all(body: bytes, code: str, violation_code: str) -> None:
    with pytest.raises(RequestError) as caught:
        decode_as(body, Request, 10_000)
    assert caught.value.body.code == code and caught.value.body.details[0].code == violation_code


def test_a_verb_without_arguments_takes_nothing_or_an_empty_object() -> None:
    assert decode_empty(b"", 100) == EmptyRequest() == decode_empty(b"{}", 100)
    with pytest.raises(RequestError):
        decode_empty(b'{"x": 1}', 100)
