"""The two ways out: signed webhooks over HTTP (``http1``) and email over SMTP (aiosmtplib).
Each ``send`` returns an ``AttemptResult`` and never raises for a failed attempt."""

from __future__ import annotations

import asyncio
import ssl
from email.message import EmailMessage
from functools import lru_cache

import aiosmtplib
from aiohttp.resolver import DefaultResolver

from services.notifier.guard import AddressRefused, GuardedResolver, InvalidUrl, check_url_static
from services.notifier.http1 import Http1Client
from services.notifier.httpwire import Endpoint, encode_headers, encode_post, endpoint
from services.notifier.retry import AttemptResult, Verdict, classify_error, classify_status
from services.notifier.signing import webhook_headers
from trainmaster.settings import Settings

USER_AGENT = "trainmaster-notifier/1 (Standard Webhooks)"
MAX_RESPONSE_READ = 64 * 1024  # a small response body is read so the connection can be reused


# every request's headers but the attempt's own: no cookies, no compression asked for
FIXED_HEADERS = encode_headers({"user-agent": USER_AGENT, "accept": "*/*"})


@lru_cache(maxsize=4096)
def _checked_endpoint(url: str, allow_private: bool) -> Endpoint:
    """The guard's static check and the request line of a URL, once per subscription URL (a
    refused one raises each time: exceptions are not cached)."""
    return endpoint(check_url_static(url, allow_private))


class WebhookSender:
    """One pooled HTTP/1.1 client for every webhook (``http1``).  Redirects are never followed
    (a 3xx is a failed attempt), the whole attempt is bounded by ``TM_WEBHOOK_TIMEOUT_S``, and
    unless ``TM_WEBHOOK_ALLOW_PRIVATE`` the client connects only through the address guard."""

    def __init__(self, settings: Settings) -> None:
        self.allow_private = settings.notifier.webhook_allow_private
        self.timeout_s = settings.notifier.webhook_timeout_s
        self.pool_size = settings.notifier.notify_max_in_flight
        self.client: Http1Client | None = None

    async def start(self) -> WebhookSender:
        resolver = DefaultResolver() if self.allow_private else GuardedResolver(DefaultResolver())
        self.client = Http1Client(resolver, max_idle=self.pool_size, keepalive_s=30.0, max_body=MAX_RESPONSE_READ)
        return self

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()

    async def send(self, url: str, secret: str, delivery_id: str, body: bytes, timestamp: int) -> AttemptResult:
        assert self.client is not None
        try:
            ep = _checked_endpoint(url, self.allow_private)
        except (AddressRefused, InvalidUrl) as exc:
            return AttemptResult(Verdict.RETRY, None, f"address refused: {exc}")
        request = encode_post(ep, FIXED_HEADERS, webhook_headers(secret, delivery_id, timestamp, body), body)
        try:
            async with asyncio.timeout(self.timeout_s):
                status = await self.client.post(ep, request)
        except Exception as exc:
            return classify_error(exc)
        return classify_status(status)


class EmailSender:
    """One SMTP session per email (notifications are few); STARTTLS and credentials from settings."""

    def __init__(self, settings: Settings) -> None:
        self.config = settings.notifier
        self.tls: ssl.SSLContext | None = None
        if settings.notifier.smtp_starttls:
            ca_file = settings.notifier.smtp_ca_file
            self.tls = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)

    async def send(self, message: EmailMessage) -> AttemptResult:
        config = self.config
        try:
            await asyncio.wait_for(aiosmtplib.send(
                message,
                hostname=config.smtp_host,
                port=config.smtp_port,
                start_tls=config.smtp_starttls,
                tls_context=self.tls,
                username=config.smtp_username,
                password=config.smtp_password.get_secret_value() if config.smtp_password else None,
                timeout=config.smtp_timeout_s,
            ), config.smtp_timeout_s)
        except Exception as exc:
            return classify_error(exc)
        return AttemptResult(Verdict.DELIVERED)
