"""The address guard, proven with stubbed resolvers only (no traffic to any private range)."""

from __future__ import annotations

import ipaddress
import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.notifier.guard import AddressRefused, GuardedResolver, InvalidUrl, check_url, is_forbidden


@pytest.mark.parametrize("ip", [
    "127.0.0.1", "127.255.0.9", "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254", "169.254.170.2",
    "100.100.100.200", "100.64.0.1", "0.0.0.0", "255.255.255.255", "224.0.0.1", "192.0.2.1", "198.18.0.1",
    "::1", "::", "fe80::1", "fc00::1", "fd00:ec2::254", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "64:ff9b::a9fe:a9fe",
    "ff02::1", "2001:db8::1",
])
def test_forbidden(ip: str) -> None:
    assert is_forbidden(ip)


@pytest.mark.parametrize("ip", ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "::ffff:8.8.8.8",
                                "64:ff9b::808:808"])
def test_public(ip: str) -> None:
    assert not is_forbidden(ip)


@given(st.sampled_from(["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "127.0.0.0/8", "169.254.0.0/16",
                        "100.64.0.0/10", "fc00::/7", "fe80::/10"]), st.integers(min_value=0))
def test_every_address_of_the_private_ranges_is_forbidden(net: str, n: int) -> None:
    network = ipaddress.ip_network(net)
    assert is_forbidden(network[n % network.num_addresses])


def stub(table: dict[str, list[str]]):
    calls: list[str] = []

    async def resolve(host: str, port: int) -> list[str]:
        calls.append(host)
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return table[host]

    resolve.calls = calls  # type: ignore[attr-defined]
    return resolve


DNS = {
    "hooks.example.com": ["93.184.216.34"],
    "internal.example.com": ["10.1.2.3"],
    "mixed.example.com": ["93.184.216.34", "192.168.0.10"],
    "metadata.example.com": ["169.254.169.254"],
    "v6.example.com": ["2606:4700::1"],
    "localhost": ["127.0.0.1", "::1"],
}


async def test_a_public_name_is_allowed() -> None:
    assert await check_url("https://hooks.example.com/x?y=1", stub(DNS)) == ["93.184.216.34"]
    assert await check_url("http://v6.example.com:8080/", stub(DNS)) == ["2606:4700::1"]


@pytest.mark.parametrize("url", ["http://internal.example.com/", "https://mixed.example.com/",
                                 "http://metadata.example.com/latest/meta-data", "http://localhost:8080/",
                                 "http://127.0.0.1/", "http://[::1]/", "http://169.254.169.254/", "http://10.0.0.7:9/",
                                 "http://[::ffff:127.0.0.1]/", "http://0.0.0.0/"])
async def test_private_targets_are_refused(url: str) -> None:
    with pytest.raises(AddressRefused):
        await check_url(url, stub(DNS))


async def test_allow_private_lets_them_through() -> None:
    assert await check_url("http://localhost:8080/", stub(DNS), allow_private=True) == ["127.0.0.1", "::1"]
    assert await check_url("http://127.0.0.1:1/", stub(DNS), allow_private=True) == ["127.0.0.1"]


async def test_literals_are_not_resolved() -> None:
    resolve = stub(DNS)
    with pytest.raises(AddressRefused):
        await check_url("http://192.168.1.1/", resolve)
    assert resolve.calls == []  # type: ignore[attr-defined]


@pytest.mark.parametrize("url", ["ftp://hooks.example.com/", "hooks.example.com/x", "http:///x", "http://",
                                 "https://user:pw@hooks.example.com/", "http://hooks.example.com:99999/",
                                 "http://hooks.example.com/a b", "javascript:alert(1)", "https://x/" + "a" * 2050,
                                 "http://nowhere.example.com/"])
async def test_malformed_or_unresolvable_urls_are_refused(url: str) -> None:
    with pytest.raises(InvalidUrl):
        await check_url(url, stub(DNS))


class StubResolver:
    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[dict]:
        return [{"hostname": host, "host": a, "port": port, "family": family, "proto": 0, "flags": 0}
                for a in self.table[host]]

    async def close(self) -> None:
        pass


async def test_the_send_time_resolver_drops_forbidden_addresses() -> None:
    guarded = GuardedResolver(StubResolver(DNS))  # type: ignore[arg-type]
    assert [r["host"] for r in await guarded.resolve("mixed.example.com", 443)] == ["93.184.216.34"]
    with pytest.raises(OSError):
        await guarded.resolve("internal.example.com", 443)
    with pytest.raises(OSError):
        await guarded.resolve("localhost", 80)
