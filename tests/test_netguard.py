"""netguard: address checks as pure functions, then the real ImageFetcher on loopback only.

No test sends traffic anywhere but 127.0.0.1: blocked non-loopback forms are checked
through `blocked_reason`/`parse_ip_host` directly, and names are mapped to 127.0.0.1 by
`StubResolver` (no test ever uses the system resolver). "Refused without connecting" is
asserted through the servers' own logs of accepted connections and requests.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket

import pytest
import yarl
from aiohttp.abc import AbstractResolver, ResolveResult
from conftest import PHOTOS
from hypothesis import given
from hypothesis import strategies as st

from tis_ray import errors
from tis_ray.config import FetchConfig
from tis_ray.errors import RowError
from tis_ray.fetch import ImageFetcher
from tis_ray.netguard import (
    AddressPolicy,
    GuardedResolver,
    blocked_reason,
    guarded_fetcher_parts,
    literal_address,
    make_url_check,
    parse_ip_host,
)
from tis_ray.sources import ImageSource

PHOTO = PHOTOS / "chelsea.jpg"
FAST = FetchConfig(timeout_s=3.0, retries=0, max_redirects=3)
ip = ipaddress.ip_address


# --- pure checks: no sockets at all ---------------------------------------------

# (URL host as written, the address it denotes, words the reason must contain)
BLOCKED = [
    ("127.0.0.1", "127.0.0.1", "loopback"),
    ("2130706433", "127.0.0.1", "loopback"),
    ("0x7f000001", "127.0.0.1", "loopback"),
    ("017700000001", "127.0.0.1", "loopback"),
    ("127.1", "127.0.0.1", "loopback"),
    ("0x7f.1", "127.0.0.1", "loopback"),
    ("0x7f.0.0.1", "127.0.0.1", "loopback"),
    ("0X7F.0.0.1", "127.0.0.1", "loopback"),
    ("0177.0.0.1", "127.0.0.1", "loopback"),
    ("127.0.0.1.", "127.0.0.1", "loopback"),
    ("%31%32%37.0.0.1", "127.0.0.1", "loopback"),
    ("[::1]", "::1", "loopback"),
    ("10.1.1", "10.1.0.1", "private"),
    ("10.0.0.1", "10.0.0.1", "private"),
    ("172.16.5.4", "172.16.5.4", "private"),
    ("172.31.255.255", "172.31.255.255", "private"),
    ("192.168.1.1", "192.168.1.1", "private"),
    ("169.254.169.254", "169.254.169.254", "link-local"),
    ("[fe80::1]", "fe80::1", "link-local"),
    ("[fe80::1%25eth0]", "fe80::1%eth0", "link-local"),
    ("100.64.0.1", "100.64.0.1", "carrier-grade NAT"),
    ("100.127.255.254", "100.127.255.254", "carrier-grade NAT"),
    ("224.0.0.1", "224.0.0.1", "multicast"),
    ("[ff02::1]", "ff02::1", "multicast"),
    ("240.0.0.1", "240.0.0.1", "reserved"),
    ("0.0.0.0", "0.0.0.0", "unspecified"),
    ("0", "0.0.0.0", "unspecified"),
    ("0.1.2.3", "0.1.2.3", "unspecified"),
    ("[::]", "::", "unspecified"),
    ("255.255.255.255", "255.255.255.255", "broadcast"),
    ("198.18.0.1", "198.18.0.1", "benchmarking"),
    ("198.19.255.1", "198.19.255.1", "benchmarking"),
    ("192.0.2.1", "192.0.2.1", "documentation"),
    ("198.51.100.7", "198.51.100.7", "documentation"),
    ("203.0.113.9", "203.0.113.9", "documentation"),
    ("[2001:db8::1]", "2001:db8::1", "documentation"),
    ("192.0.0.8", "192.0.0.8", "IETF protocol assignment"),
    ("[fd00::1]", "fd00::1", "unique local"),
    ("[fc00::1]", "fc00::1", "unique local"),
    ("[fec0::1]", "fec0::1", "site-local"),
    ("[::ffff:127.0.0.1]", "::ffff:7f00:1", "IPv4-mapped (127.0.0.1, loopback)"),
    ("[::ffff:7f00:1]", "::ffff:7f00:1", "IPv4-mapped (127.0.0.1, loopback)"),
    ("[::ffff:169.254.169.254]", "::ffff:a9fe:a9fe", "IPv4-mapped (169.254.169.254, link-local)"),
    ("[::7f00:1]", "::7f00:1", "IPv4-compatible (127.0.0.1, loopback)"),
    ("[::ffff:0:a00:1]", "::ffff:0:a00:1", "IPv4-translated (10.0.0.1, private)"),
    ("[64:ff9b::a9fe:a9fe]", "64:ff9b::a9fe:a9fe", "NAT64 (169.254.169.254, link-local)"),
    ("[64:ff9b:1::a9fe:a9fe]", "64:ff9b:1::a9fe:a9fe", "local-use NAT64"),
    ("[2002:a9fe:a9fe::]", "2002:a9fe:a9fe::", "6to4 (169.254.169.254, link-local)"),
    ("[2002:7f00:1::1]", "2002:7f00:1::1", "6to4 (127.0.0.1, loopback)"),
    # Teredo keeps the client's IPv4 inverted: ~0x7f000001 == 0x80fffffe.
    ("[2001:0:4136:e378:8000:63bf:80ff:fffe]", "2001:0:4136:e378:8000:63bf:80ff:fffe", "Teredo (127.0.0.1, loopback)"),
]

PUBLIC = ["8.8.8.8", "1.1.1.1", "140.82.112.3", "[2606:4700:4700::1111]", "[2a00:1450:4001:80b::200e]"]

# Embedding forms are refused even around a public IPv4 (the choice `blocked_reason` documents).
EMBEDDED_PUBLIC = {
    "::ffff:8.8.8.8": "IPv4-mapped (8.8.8.8, public)",
    "64:ff9b::8.8.8.8": "NAT64 (8.8.8.8, public)",
    "2002:808:808::1": "6to4 (8.8.8.8, public)",
    "2001:0:4136:e378:8000:63bf:f7f7:f7f7": "Teredo (8.8.8.8, public)",
}

NAMES = ["example.com", "images.example.org", "localhost", "cafe", "1e100.net", "a.b", "1.2.3.4.5", "256.1",
         "0x100000000"]


@pytest.mark.parametrize("host, address, reason", BLOCKED)
def test_blocked_forms_parse_and_are_refused(host, address, reason):
    parsed = parse_ip_host(host)
    assert parsed == ip(address)
    assert blocked_reason(parsed) == reason  # the whole reason: it is the error text users read


@pytest.mark.parametrize("host", PUBLIC)
def test_public_addresses_pass(host):
    assert blocked_reason(parse_ip_host(host)) is None


@pytest.mark.parametrize("address, reason", EMBEDDED_PUBLIC.items())
def test_embedding_prefixes_are_refused_outright(address, reason):
    assert blocked_reason(ip(address)) == reason


@pytest.mark.parametrize("host", NAMES)
def test_host_names_are_not_addresses(host):
    assert parse_ip_host(host) is None


def _spell_octet(n: int, style: str) -> str:
    return {"dec": str(n), "hex": hex(n), "oct": "0" + oct(n)[2:]}[style]


@given(
    st.integers(0, 2**32 - 1),
    st.integers(1, 4),
    st.lists(st.sampled_from(["dec", "hex", "oct"]), min_size=4, max_size=4),
    st.booleans(),
)
def test_every_inet_aton_spelling_parses_to_the_same_address(value, parts, styles, trailing_dot):
    octets = list(ipaddress.IPv4Address(value).packed)
    head = octets[: parts - 1]
    last = int.from_bytes(bytes(octets[parts - 1 :]), "big")
    spelled = [_spell_octet(n, s) for n, s in zip(head + [last], styles)]
    host = ".".join(spelled) + ("." if trailing_dot else "")
    assert parse_ip_host(host) == ipaddress.IPv4Address(value)


@given(st.integers(0, 2**32 - 1))
def test_v4_embedded_in_v6_is_never_allowed(value):
    v4 = ipaddress.IPv4Address(value)
    for form in (f"::ffff:{v4}", f"64:ff9b::{v4}", f"2002:{value >> 16:x}:{value & 0xFFFF:x}::1"):
        reason = blocked_reason(ip(form))
        assert reason is not None and str(v4) in reason
        assert (blocked_reason(v4) or "public") in reason


# --- AddressPolicy ----------------------------------------------------------------


def test_policy_refuses_with_a_clear_detail():
    with pytest.raises(RowError) as caught:
        AddressPolicy().check_ip(ip("169.254.169.254"), "metadata.internal", 80)
    assert caught.value.kind == errors.BLOCKED_ADDRESS
    assert caught.value.detail == "metadata.internal resolves to 169.254.169.254, a link-local address"


def test_policy_allows_listed_networks_ips_and_names():
    policy = AddressPolicy.from_strings([" 10.0.0.0/8 ", "", "192.168.1.5", "::1/128", "Images.Internal."])
    policy.check_ip(ip("10.2.3.4"), "anything", 80)
    policy.check_ip(ip("192.168.1.5"), "anything", 443)
    policy.check_ip(ip("::1"), "anything", 80)
    policy.check_ip(ip("127.0.0.1"), "IMAGES.internal", 80)  # names: case and trailing dot ignored
    policy.check_ip(ip("8.8.8.8"), "anything", 80)
    for address, host in [("192.168.1.6", "x"), ("127.0.0.1", "other.internal"), ("::ffff:10.0.0.1", "x")]:
        with pytest.raises(RowError):
            policy.check_ip(ip(address), host, 80)


BAD_ENTRIES = ["not a host", "10.0.0.0/33", "127.1", "0x7f.0.0.1", "http://x.test", "a..b", "-x.test"]


@pytest.mark.parametrize("entry", BAD_ENTRIES)
def test_policy_rejects_bad_entries(entry):
    with pytest.raises(ValueError, match="allowlist entry"):
        AddressPolicy.from_strings([entry])


# --- url_check and resolver, without a connection -----------------------------------


class StubResolver(AbstractResolver):
    """Answers from a table and records each question; unknown names fail like NXDOMAIN."""

    def __init__(self, table: dict[str, list[str]] | None = None):
        self.table = table or {}
        self.calls: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.calls.append(host)
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, f"stub resolver: no such name {host}")
        return [
            ResolveResult(hostname=host, host=a, port=port, proto=0, flags=socket.AI_NUMERICHOST,
                          family=socket.AF_INET6 if ":" in a else socket.AF_INET)
            for a in self.table[host]
        ]

    async def close(self) -> None:
        pass


def test_resolver_refuses_a_host_if_any_address_is_blocked():
    stub = StubResolver({
        "mixed.example": ["8.8.8.8", "10.0.0.1"],
        "public.example": ["8.8.8.8", "2606:4700::1"],
        "odd.example": ["not-an-ip"],
    })
    resolver = GuardedResolver(AddressPolicy(), stub)
    with pytest.raises(RowError, match="mixed.example resolves to 10.0.0.1, a private address"):
        asyncio.run(resolver.resolve("mixed.example", 80))
    with pytest.raises(RowError, match="not an IP address"):
        asyncio.run(resolver.resolve("odd.example", 80))
    answer = asyncio.run(resolver.resolve("public.example", 80))
    assert [a["host"] for a in answer] == ["8.8.8.8", "2606:4700::1"]


def test_url_check_judges_schemes_and_ip_hosts_but_leaves_names_to_the_resolver():
    check = make_url_check(AddressPolicy(("10.0.0.0/8",)))
    asyncio.run(check(yarl.URL("http://10.1.2.3/x.jpg")))
    asyncio.run(check(yarl.URL("https://some.name.example/x.jpg")))
    refused = [
        ("ftp://8.8.8.8/x", errors.UNSUPPORTED_SCHEME),
        ("http://0x7f.1/x", errors.BLOCKED_ADDRESS),
        ("http://[fe80::1%25eth0]/x", errors.BLOCKED_ADDRESS),
    ]
    for url, kind in refused:
        with pytest.raises(RowError) as caught:
            asyncio.run(check(yarl.URL(url)))
        assert caught.value.kind == kind


# --- the real ImageFetcher against loopback servers --------------------------------


def fetch(url: str, allow: tuple[str, ...] = (), names: dict[str, list[str]] | None = None,
          with_url_check: bool = True) -> bytes | RowError:
    """One fetch through the guarded parts, any port allowed (the port policy has tests of its own);
    names resolve only through a `StubResolver`."""
    return guarded_fetch(url, AddressPolicy(allow, ports=None), StubResolver(names), with_url_check)


def guarded_fetch(url: str, policy: AddressPolicy, resolver: AbstractResolver,
                  with_url_check: bool = True) -> bytes | RowError:
    """The bytes, or the row error, of one fetch as the service makes it under `policy`."""

    async def go():
        check, connector = guarded_fetcher_parts(policy, FAST, resolver)
        fetcher = ImageFetcher(FAST, url_check=check if with_url_check else None, connector=connector)
        try:
            return await fetcher.fetch(ImageSource("http", url))
        except RowError as exc:
            return exc
        finally:
            await fetcher.close()

    return asyncio.run(go())


def assert_blocked(result, *words: str) -> None:
    assert isinstance(result, RowError), f"expected a refusal, got {type(result).__name__}"
    assert result.kind == errors.BLOCKED_ADDRESS
    for word in words:
        assert word in result.detail


def test_loopback_is_refused_by_default_without_connecting(loopback):
    result = fetch(f"http://127.0.0.1:{loopback.port}/photo/chelsea.jpg")
    assert_blocked(result, "127.0.0.1 resolves to 127.0.0.1, a loopback address")
    assert loopback.connections == 0 and loopback.requests == []


@pytest.mark.parametrize("allow", [("127.0.0.1",), ("127.0.0.0/8",)])
def test_allowlisted_loopback_is_fetched(loopback, allow):
    assert fetch(f"http://127.0.0.1:{loopback.port}/photo/chelsea.jpg", allow) == PHOTO.read_bytes()
    assert loopback.requests == ["/photo/chelsea.jpg"]


@pytest.mark.parametrize("with_url_check", [True, False])
def test_a_name_resolving_to_loopback_is_refused_without_connecting(loopback, with_url_check):
    # Without url_check the resolver alone refuses, and its RowError reaches the caller unwrapped.
    url = f"http://public.example:{loopback.port}/photo/chelsea.jpg"
    result = fetch(url, names={"public.example": ["127.0.0.1"]}, with_url_check=with_url_check)
    assert_blocked(result, "public.example resolves to 127.0.0.1, a loopback address")
    assert loopback.connections == 0 and loopback.requests == []


@pytest.mark.parametrize("allow", [("public.example",), ("127.0.0.0/8",)])
def test_an_allowlisted_name_or_network_connects_to_the_resolved_address(loopback, allow):
    url = f"http://public.example:{loopback.port}/photo/chelsea.jpg"
    assert fetch(url, allow, names={"public.example": ["127.0.0.1"]}) == PHOTO.read_bytes()
    assert loopback.requests == ["/photo/chelsea.jpg"]


def test_a_redirect_from_an_allowlisted_name_to_its_raw_ip_is_refused(hop_server):
    names = {"allowed.test": ["127.0.0.1"]}
    to_ip = f"http://127.0.0.1:{hop_server.port}/photo/chelsea.jpg"
    result = fetch(f"http://allowed.test:{hop_server.port}/goto?url={to_ip}", ("allowed.test",), names)
    assert_blocked(result, "127.0.0.1 resolves to 127.0.0.1")
    assert hop_server.requests == [f"/goto?url={to_ip}"]
    assert hop_server.connections == 1


def test_a_redirect_that_keeps_the_allowlisted_name_is_followed(hop_server):
    names = {"allowed.test": ["127.0.0.1"]}
    to_name = f"http://allowed.test:{hop_server.port}/photo/chelsea.jpg"
    result = fetch(f"http://allowed.test:{hop_server.port}/goto?url={to_name}", ("allowed.test",), names)
    assert result == PHOTO.read_bytes()
    assert hop_server.requests == [f"/goto?url={to_name}", "/photo/chelsea.jpg"]


@pytest.mark.parametrize("spelling", [
    "2130706433", "127.1", "0x7f.1", "0x7f.0.0.1", "0x7f000001", "0177.0.0.1", "017700000001",
    "127.0.0.1.", "[::ffff:127.0.0.1]", "[::ffff:7f00:1]",  # percent-escaped forms: test_security.py
])
def test_odd_spellings_of_loopback_are_refused_without_connecting(loopback, spelling):
    result = fetch(f"http://{spelling}:{loopback.port}/photo/chelsea.jpg")
    assert_blocked(result, "127.0.0.1")
    assert loopback.connections == 0 and loopback.requests == []


def test_allowlist_only_refuses_public_addresses_and_unlisted_names_without_lookup():
    policy = AddressPolicy.from_strings(["127.0.0.0/8", "images.internal"], allowlist_only=True)
    policy.check_ip(ipaddress.ip_address("127.0.0.1"), "127.0.0.1", 80)
    policy.check_host_name("images.internal", 80)
    with pytest.raises(RowError, match="not on the allowlist") as refused:
        policy.check_ip(ipaddress.ip_address("8.8.8.8"), "8.8.8.8", 80)
    assert refused.value.kind == errors.BLOCKED_ADDRESS
    with pytest.raises(RowError, match="not on the allowlist"):
        policy.check_host_name("example.com", 80)
    AddressPolicy.from_strings(["127.0.0.0/8"]).check_host_name("example.com", 80)  # default mode: left to the resolver

    seen: list[str] = []

    class SpyResolver(AbstractResolver):
        async def resolve(self, host, port=0, family=socket.AF_INET):
            seen.append(host)
            return []

        async def close(self):
            pass

    async def check():
        url_check, connector = guarded_fetcher_parts(policy, FetchConfig(), SpyResolver())
        try:
            with pytest.raises(RowError, match="not on the allowlist"):
                await url_check(yarl.URL("http://public.example/x.jpg"))
        finally:
            await connector.close()

    asyncio.run(check())
    assert seen == []


# --- what the mutation run (scripts/mutation.sh netguard) showed no test pinned down ---------

# Digits-and-dots hosts: the C library's inet_aton is a second, independent reading of the
# same forms (octal with a leading 0, hex with 0x, 1 to 4 parts). Hosts it refuses must not
# parse as an address here either.
INET_ATON_CASES = ["1.2.3.4", "127.1", "0x7f.1", "0177.0.0.1", "01.02.03.04", "07.0.0.1", "010.0.0.1",
                   "08.0.0.1", "09.1.1.1", "1.2.3.4.5", "1.2.3.4.5.6", "00.0.0.0", "0.0.0.0", "4294967295",
                   "4294967296", "1.16777216", "1.16777215", "0x", "0x.1.1.1", "1..1", "256.1.1.1",
                   "0.0.0.0.0"]


@pytest.mark.parametrize("host", INET_ATON_CASES)
def test_digit_and_dot_hosts_read_as_inet_aton_reads_them(host):
    try:
        expected = ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        expected = None
    assert parse_ip_host(host) == expected


def test_half_a_bracket_is_not_an_ipv6_literal():
    assert parse_ip_host("[::1]") == ip("::1")
    for host in ("[::1", "::1]"):
        assert parse_ip_host(host) is None


@pytest.mark.parametrize("host, kind, detail", [
    ("fe80::1%eth0", errors.BLOCKED_ADDRESS, "fe80::1%eth0 has an IPv6 zone id; zone ids are not fetched"),
    ("::1::2", errors.INVALID_URL, "'::1::2' is not an IPv6 address"),
    ("ex%61mple.com", errors.INVALID_URL, "'ex%61mple.com' has percent-escapes in its host"),
    ("1.2.3.4.5", errors.INVALID_URL, "'1.2.3.4.5' is neither a host name nor an IP address"),
    ("256.1.1.1", errors.INVALID_URL, "'256.1.1.1' is neither a host name nor an IP address"),
])
def test_literal_address_refusals_say_why(host, kind, detail):
    with pytest.raises(RowError) as caught:
        literal_address(host)
    assert (caught.value.kind, caught.value.detail) == (kind, detail)


def test_names_with_digits_are_names_not_bad_addresses():
    assert literal_address("1e100.net") is None
    assert literal_address("123.example") is None


@pytest.mark.parametrize("entry, port", [("images.test:1", 1), ("images.test:65535", 65535), ("[::1]:8080", 8080),
                                         ("[::1]", None), ("10.0.0.1", None)])
def test_allowlist_ports_from_1_to_65535(entry, port):
    (parsed,) = AddressPolicy.from_strings([entry])._entries
    assert parsed.port == port


@pytest.mark.parametrize("entry", ["images.test:0", "images.test:65536", "[::1]:65536", "images.test:", "[::1]x"])
def test_allowlist_ports_outside_1_to_65535_are_refused_naming_the_entry(entry):
    with pytest.raises(ValueError) as caught:
        AddressPolicy.from_strings([entry])
    assert repr(entry) in str(caught.value)


def test_no_port_policy_lets_every_port_through():
    policy = AddressPolicy.from_strings([], ports=None)
    assert policy.ports is None
    policy.check_ip(ip("8.8.8.8"), "dns.example", 5353)
    policy.check_host_name("images.example", 5353)


def test_a_refused_port_names_the_host_and_the_ports_allowed():
    policy = AddressPolicy.from_strings([], ports=[8080, 80])
    with pytest.raises(RowError) as by_name:
        policy.check_host_name("images.example", 22)
    assert by_name.value.detail == "images.example: port 22 is not fetched (allowed: 80, 8080)"
    with pytest.raises(RowError) as by_ip:
        policy.check_ip(ip("8.8.8.8"), "8.8.8.8", 22)
    assert by_ip.value.detail == "8.8.8.8: port 22 is not fetched (allowed: 80, 8080)"


def test_url_check_refusals_say_why():
    check = make_url_check(AddressPolicy())
    with pytest.raises(RowError) as scheme:
        asyncio.run(check(yarl.URL("ftp://images.example/x.jpg")))
    assert (scheme.value.kind, scheme.value.detail) == (errors.UNSUPPORTED_SCHEME, "'ftp' URLs are not fetched")
    with pytest.raises(RowError) as hostless:
        asyncio.run(check(yarl.URL("http:///x.jpg")))
    assert (hostless.value.kind, hostless.value.detail) == (errors.INVALID_URL, "http:///x.jpg has no host")


def test_the_guarded_resolver_asks_for_the_address_family_it_was_asked_for():
    seen = []

    class Recording(StubResolver):
        async def resolve(self, host, port=0, family=socket.AF_INET):
            seen.append(family)
            return await super().resolve(host, port, family)

    resolver = GuardedResolver(AddressPolicy(), Recording({"v6.example": ["2606:4700::1"]}))
    asyncio.run(resolver.resolve("v6.example", 443, socket.AF_INET6))
    assert seen == [socket.AF_INET6]


def test_the_guarded_connector_looks_every_connection_up_afresh():
    """No DNS cache (a cached answer would outlive the check that let it in), the fetch
    config's in-flight cap, and no per-host cap of aiohttp's own (`HostSlots` is that)."""
    stub = StubResolver({"images.example": ["8.8.8.8"]})
    cfg = FetchConfig(max_in_flight=7)

    async def main():
        _, connector = guarded_fetcher_parts(AddressPolicy(), cfg, stub)
        try:
            for _ in range(2):
                await connector._resolve_host("images.example", 80)
            return connector.limit, connector.limit_per_host
        finally:
            await connector.close()

    assert asyncio.run(main()) == (7, 0)
    assert stub.calls == ["images.example", "images.example"]


def test_non_ascii_digits_are_not_an_address():
    """``int()`` reads Arabic-Indic digits; inet_aton and resolvers do not."""
    assert parse_ip_host("\u0661\u0662\u0667.0.0.1") is None


def test_a_network_entry_keeps_its_port_and_a_bad_one_is_named():
    (entry,) = AddressPolicy.from_strings(["10.0.0.0/8:8080"])._entries
    assert (str(entry.network), entry.port) == ("10.0.0.0/8", 8080)
    with pytest.raises(ValueError) as caught:
        AddressPolicy.from_strings(["10.0.0.1/8"])
    assert str(caught.value) == "allowlist entry '10.0.0.1/8' has host bits set (the network is 10.0.0.0/8)"


def test_name_refusals_are_blocked_address_and_say_why():
    with pytest.raises(RowError) as unlisted:
        AddressPolicy.from_strings(["images.internal"], allowlist_only=True).check_host_name("other.example", 443)
    assert (unlisted.value.kind, unlisted.value.detail) == (errors.BLOCKED_ADDRESS,
                                                            "other.example is not on the allowlist")
    with pytest.raises(RowError) as local:
        AddressPolicy().check_host_name("localhost", 80)
    assert (local.value.kind, local.value.detail) == (errors.BLOCKED_ADDRESS, "localhost is a localhost name")
    resolver = GuardedResolver(AddressPolicy(), StubResolver({"odd.example": ["not-an-ip"]}))
    with pytest.raises(RowError) as odd:
        asyncio.run(resolver.resolve("odd.example", 80))
    assert odd.value.kind == errors.BLOCKED_ADDRESS
