"""Signatures verify with the official ``standardwebhooks`` package, for arbitrary bodies."""

from __future__ import annotations

import base64
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from standardwebhooks import Webhook, WebhookVerificationError

from services.notifier.signing import InvalidSecret, generate_secret, secret_key, sign, webhook_headers

secrets_st = st.binary(min_size=24, max_size=64).map(lambda b: "whsec_" + base64.b64encode(b).decode())
ids = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126, exclude_characters=" ,"), min_size=1,
              max_size=60)


def test_the_specification_example() -> None:
    # the example in the Standard Webhooks specification
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    assert sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}') == (
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=")


@settings(max_examples=200)
@given(secret=secrets_st, msg_id=ids, body=st.text(max_size=2000))
def test_every_signature_verifies_with_standardwebhooks(secret: str, msg_id: str, body: str) -> None:
    data = body.encode()
    headers = webhook_headers(secret, msg_id, int(time.time()), data)
    Webhook(secret).verify(data, headers, json_parse=False)  # raises when it does not verify


@given(secret=secrets_st, body=st.text(min_size=1, max_size=200))
def test_a_changed_body_or_id_does_not_verify(secret: str, body: str) -> None:
    data = body.encode()
    headers = webhook_headers(secret, "msg_1", int(time.time()), data)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(data + b"x", headers, json_parse=False)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(data, {**headers, "webhook-id": "msg_2"}, json_parse=False)
    with pytest.raises(WebhookVerificationError):
        Webhook(generate_secret()).verify(data, headers, json_parse=False)


def test_generated_secrets_are_whsec_and_24_bytes() -> None:
    made = {generate_secret() for _ in range(50)}
    assert len(made) == 50
    for s in made:
        assert s.startswith("whsec_") and len(secret_key(s)) == 24


@pytest.mark.parametrize("bad", ["", "whsec_", "abc", "whsec_!!!!", "whsec_" + base64.b64encode(b"short").decode(),
                                 "whsec_" + base64.b64encode(b"x" * 65).decode()])
def test_bad_secrets_are_refused(bad: str) -> None:
    with pytest.raises(InvalidSecret):
        secret_key(bad)


def test_headers_carry_id_timestamp_signature() -> None:
    secret = generate_secret()
    h = webhook_headers(secret, "msg_x", 1700000000, b"{}")
    assert h["webhook-id"] == "msg_x" and h["webhook-timestamp"] == "1700000000"
    assert h["webhook-signature"].startswith("v1,")
    assert h["content-type"].startswith("application/cloudevents+json")
