"""Pure core and adapter: webhook URLs must not reach the service's own network.

A URL whose host is, or resolves to, a loopback, private, link-local (cloud metadata lives
there), shared, reserved, multicast or unspecified address is refused when the subscription is
made (``check_url``) and again at every send: IP literals by ``check_url_static``, names by
``GuardedResolver``, the resolver the HTTP client connects through, so the address checked is
the address connected to (no window for DNS rebinding between check and connect).
``TM_WEBHOOK_ALLOW_PRIVATE=true`` turns the guard off (tests use loopback receivers).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Awaitable, Callable
from urllib.parse import SplitResult, urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolve = Callable[[str, int], Awaitable[list[str]]]  # host, port -> addresses

# Named for the reader; every one of them is also outside the global range.
METADATA_ADDRESSES = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean
    "169.254.170.2",  # AWS ECS task metadata
    "100.100.100.200",  # Alibaba Cloud
    "fd00:ec2::254",  # AWS over IPv6
))
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
MAX_URL_LENGTH = 2048


class InvalidUrl(ValueError):
    pass


class AddressRefused(ValueError):
    """The URL reaches an address that webhooks may not reach."""


def _embedded_v4(ip: IPAddress) -> IPAddress:
    """The IPv4 address inside an IPv4-mapped or NAT64 (64:ff9b::/96) IPv6 address."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip in _NAT64:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip


def is_forbidden(ip: IPAddress | str) -> bool:
    """True for every address that is not plainly public unicast."""
    addr = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
    if isinstance(addr, ipaddress.IPv6Address) and addr.scope_id:
        return True  # fe80::1%eth0 and friends
    inner = _embedded_v4(addr)
    for a in {addr, inner}:
        if a in METADATA_ADDRESSES or a.is_multicast or not a.is_global:
            return True
    return False


def parse_url(url: str) -> SplitResult:
    """Syntax only: http or https, a host, no credentials, at most 2048 characters."""
    if len(url) > MAX_URL_LENGTH:
        raise InvalidUrl(f"a webhook URL has at most {MAX_URL_LENGTH} characters")
    if any(c.isspace() or ord(c) < 0x20 for c in url):
        raise InvalidUrl("a webhook URL has no spaces or control characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError on a bad port
    except ValueError as exc:
        raise InvalidUrl(f"not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise InvalidUrl("a webhook URL starts with http:// or https://")
    if not parts.hostname:
        raise InvalidUrl("a webhook URL names a host")
    if parts.username is not None or parts.password is not None:
        raise InvalidUrl("a webhook URL carries no user name or password: use the signing secret to authenticate")
    return parts


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def check_url_static(url: str, allow_private: bool = False) -> SplitResult:
    """What can be checked without DNS (used at every send; names are checked by the resolver)."""
    parts = parse_url(url)
    host = parts.hostname or ""
    ip = _literal(host)
    if not allow_private and ip is not None and is_forbidden(ip):
        raise AddressRefused(f"{host} is a loopback, private, link-local or otherwise non-public address")
    return parts


async def check_url(url: str, resolve: Resolve, allow_private: bool = False) -> list[str]:
    """Refuse a URL that is malformed or whose host is or resolves to a forbidden address; return
    the addresses it resolved to.  Every resolved address must be allowed: a name with one
    public and one private address is refused (the client might connect to either)."""
    parts = check_url_static(url, allow_private)
    host = parts.hostname or ""
    if _literal(host) is not None:
        return [host]
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        addresses = await resolve(host, port)
    except OSError as exc:
        raise InvalidUrl(f"cannot resolve {host}: {exc}") from None
    if not addresses:
        raise InvalidUrl(f"{host} resolves to no address")
    if not allow_private:
        bad = [a for a in addresses if is_forbidden(a)]
        if bad:
            raise AddressRefused(f"{host} resolves to {', '.join(sorted(bad))}: a loopback, private, "
                                 "link-local or otherwise non-public address")
    return addresses


class GuardedResolver(AbstractResolver):
    """The HTTP client's resolver: resolves with ``inner`` and drops forbidden addresses; when
    none is left the connection fails (and the attempt is retried later, like any connection
    error)."""

    def __init__(self, inner: AbstractResolver) -> None:
        self.inner = inner

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        results = await self.inner.resolve(host, port, family)
        allowed = [r for r in results if not is_forbidden(r["host"])]
        if not allowed:
            raise OSError(f"webhook host {host} resolves only to non-public addresses: refused")
        return allowed

    async def close(self) -> None:
        await self.inner.close()


async def system_resolve(host: str, port: int) -> list[str]:
    """The system resolver as a ``Resolve`` (for ``check_url`` at subscription time)."""
    import asyncio

    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({info[4][0] for info in infos})
