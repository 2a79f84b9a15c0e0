"""The two ways out: signed webhooks over HTTP (aiohttp) and email over SMTP (aiosmtplib).
Each ``send`` returns an ``AttemptResult`` and never raises for a failed attempt."""

from __future__ import annotations

import asyncio
import ssl
from email.message import EmailMessage

import aiohttp
import aiosmtplib
from aiohttp.resolver import DefaultResolver

from services.notifier.guard import AddressRefused, GuardedResolver, InvalidUrl, check_url_static
from services.notifier.retry import AttemptResult, Verdict, classify_error, classify_status
from services.notifier.signing import webhook_headers
from trainmaster.settings import Settings

USER_AGENT = "trainmaster-notifier/1 (Standard Webhooks)"
MAX_RESPONSE_READ = 64 * 1024  # a small response body is read so the connection can be reused


class WebhookSender:
    """One pooled HTTP client for every webhook.  Redirects are never followed (a 3xx is a failed
    attempt), the whole attempt is bounded by ``TM_WEBHOOK_TIMEOUT_S``, and unless
    ``TM_WEBHOOK_ALLOW_PRIVATE`` the client connects only through the address guard."""

    def __init__(self, settings: Settings) -> None:
        self.allow_private = settings.notifier.webhook_allow_private
        self.timeout = aiohttp.ClientTimeout(total=settings.notifier.webhook_timeout_s)
        self.pool_size = settings.notifier.notify_max_in_flight
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> WebhookSender:
        resolver = DefaultResolver() if self.allow_private else GuardedResolver(DefaultResolver())
        connector = aiohttp.TCPConnector(limit=self.pool_size, limit_per_host=0, resolver=resolver,
                                         ttl_dns_cache=10, keepalive_timeout=30)
        self.session = aiohttp.ClientSession(connector=connector, timeout=self.timeout, auto_decompress=False,
                                             headers={"user-agent": USER_AGENT}, cookie_jar=aiohttp.DummyCookieJar())
        return self

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    async def send(self, url: str, secret: str, delivery_id: str, body: bytes, timestamp: int) -> AttemptResult:
        assert self.session is not None
        try:
            check_url_static(url, self.allow_private)
        except (AddressRefused, InvalidUrl) as exc:
            return AttemptResult(Verdict.RETRY, None, f"address refused: {exc}")
        headers = webhook_headers(secret, delivery_id, timestamp, body)
        try:
            async with self.session.post(url, data=body, headers=headers, allow_redirects=False) as resp:
                if resp.content_length is not None and resp.content_length <= MAX_RESPONSE_READ:
                    await resp.read()
                return classify_status(resp.status)
        except Exception as exc:
            return classify_error(exc)


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
