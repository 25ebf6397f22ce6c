"""Refusing internal addresses when fetching user-supplied URLs (SSRF protection).

Two checks, both needed. `make_url_check` runs before every hop's connection and
judges hosts that are IP addresses, in any spelling: aiohttp never hands those to
a resolver. `GuardedResolver` sits in the connector and judges every address a
host name resolves to; aiohttp connects only to addresses it returned, so the
address checked is the address connected to (no DNS-rebinding window).
Nothing here is an allowlist of the outside world: only globally routable
unicast passes, unless `AddressPolicy.allow` names the host or its network.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import unquote

import aiohttp
import yarl
from aiohttp.abc import AbstractResolver, ResolveResult

from .config import FetchConfig
from .errors import BLOCKED_ADDRESS, INVALID_URL, UNSUPPORTED_SCHEME, RowError
from .fetch import UrlCheck
from .sources import HTTP_SCHEMES

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_net = ipaddress.ip_network

# Special ranges that `ipaddress`'s flags do not name (or name only as "private").
_NAMED_NETWORKS: tuple[tuple[IPNetwork, str], ...] = (
    (_net("0.0.0.0/8"), "unspecified"),  # "this network"; Linux connects 0.0.0.0 to localhost
    (_net("255.255.255.255/32"), "broadcast"),
    (_net("100.64.0.0/10"), "carrier-grade NAT"),
    (_net("192.0.0.0/24"), "IETF protocol assignment"),  # the 3.11.7 stdlib calls most of it global
    (_net("192.88.99.0/24"), "6to4 relay anycast"),
    (_net("198.18.0.0/15"), "benchmarking"),
    (_net("192.0.2.0/24"), "documentation"),
    (_net("198.51.100.0/24"), "documentation"),
    (_net("203.0.113.0/24"), "documentation"),
    (_net("2001:db8::/32"), "documentation"),
    (_net("3fff::/20"), "documentation"),
    (_net("fc00::/7"), "unique local"),
    (_net("fec0::/10"), "site-local"),
)


def _low32(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)


# IPv6 forms that carry an IPv4 address, with how to read it out (None: not at a fixed place).
# All are refused outright, public IPv4 inside or not: a gateway or dual-stack socket may
# turn them into IPv4 traffic that the v6 check never saw. Allowlist the prefix to use NAT64.
_EMBEDDING = (
    (_net("::ffff:0:0/96"), "IPv4-mapped", _low32),
    (_net("::ffff:0:0:0/96"), "IPv4-translated", _low32),
    (_net("::/96"), "IPv4-compatible", _low32),
    (_net("64:ff9b::/96"), "NAT64", _low32),
    (_net("64:ff9b:1::/48"), "local-use NAT64", None),
    (_net("2002::/16"), "6to4", lambda ip: ip.sixtofour),
    (_net("2001::/32"), "Teredo", lambda ip: ip.teredo[1]),
)


def blocked_reason(ip: IPAddress) -> str | None:
    """Why connecting to `ip` could reach something internal, or None for global unicast."""
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if isinstance(ip, ipaddress.IPv6Address):
        for net, form, embedded in _EMBEDDING:
            if ip in net:
                if embedded is None:
                    return form
                inner = embedded(ip)
                return f"{form} ({inner}, {blocked_reason(inner) or 'public'})"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    for net, name in _NAMED_NETWORKS:
        if ip.version == net.version and ip in net:
            return name
    if ip.is_reserved:
        return "reserved"
    if ip.is_private:
        return "private"
    if not ip.is_global:
        return "non-global"
    return None


def parse_ip_host(host: str) -> IPAddress | None:
    """The IP address a URL host denotes, however spelled; None for a host name.

    Accepts what resolvers and browsers accept, so that no spelling slips past as a
    "name": brackets, zone ids, percent-escapes, a trailing dot, and the inet_aton
    IPv4 forms (``2130706433``, ``127.1``, ``0x7f.1``, ``0177.0.0.1``).
    """
    host = unquote(host.strip())
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if ":" in host:
        try:
            return ipaddress.IPv6Address(host)
        except ValueError:
            return None
    return _parse_ipv4(host[:-1] if host.endswith(".") else host)


def _parse_ipv4(host: str) -> ipaddress.IPv4Address | None:
    parts = host.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    numbers = []
    for part in parts:
        lowered = part.lower()
        if lowered.startswith("0x"):
            digits, base = lowered[2:] or "0", 16
        elif len(part) > 1 and part.startswith("0"):
            digits, base = part[1:], 8
        else:
            digits, base = part, 10
        if not digits.isascii() or not digits.isalnum():
            return None
        try:
            numbers.append(int(digits, base))
        except ValueError:
            return None
    *head, last = numbers
    if any(n > 255 for n in head) or last >= 256 ** (4 - len(head)):
        return None
    value = last
    for i, n in enumerate(head):
        value |= n << (8 * (3 - i))
    return ipaddress.IPv4Address(value)


_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?")


def _is_host_name(entry: str) -> bool:
    """DNS labels, and not an odd IPv4 spelling (those must be written as plain IPs)."""
    labels = entry.lower().removesuffix(".").split(".")
    return all(_LABEL.fullmatch(label) for label in labels) and parse_ip_host(entry) is None


@dataclass(frozen=True)
class AddressPolicy:
    """Which internal destinations are allowed anyway: host names, IPs or CIDR networks.

    A name entry allows whatever that name resolves to, but only when the URL says that
    name; an IP or network entry allows those addresses under any name.
    """

    allow: tuple[str, ...] = ()
    allowlist_only: bool = False  # refuse everything not on the allowlist, public addresses too
    _names: frozenset[str] = field(init=False, repr=False, compare=False)
    _networks: tuple[IPNetwork, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names, networks = set(), []
        for entry in self.allow:
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                if not _is_host_name(entry):
                    raise ValueError(
                        f"allowlist entry {entry!r} is not a host name, a plain IP address or a CIDR network"
                    ) from None
                names.add(_name_key(entry))
        object.__setattr__(self, "_names", frozenset(names))
        object.__setattr__(self, "_networks", tuple(networks))

    @classmethod
    def from_strings(cls, entries: Iterable[str], allowlist_only: bool = False) -> AddressPolicy:
        """From config or CLI values: entries are stripped, blank ones dropped."""
        return cls(tuple(e.strip() for e in entries if e.strip()), allowlist_only)

    def check_host_name(self, host: str) -> None:
        """In allowlist-only mode, refuse a name not on the list before it is even looked up."""
        if self.allowlist_only and _name_key(host) not in self._names:
            raise RowError(BLOCKED_ADDRESS, f"{host} is not on the allowlist")

    def check_ip(self, ip: IPAddress, host: str) -> None:
        """Raise `RowError` (blocked_address) unless `host` may connect to `ip`."""
        if _name_key(host) in self._names:
            return
        if any(ip.version == net.version and ip in net for net in self._networks):
            return
        if self.allowlist_only:
            raise RowError(BLOCKED_ADDRESS, f"{host} ({ip}) is not on the allowlist")
        reason = blocked_reason(ip)
        if reason is not None:
            raise RowError(BLOCKED_ADDRESS, f"{host} resolves to {ip}, a {reason} address")


def _name_key(host: str) -> str:
    return host.lower().rstrip(".")


class GuardedResolver(AbstractResolver):
    """Resolves through `inner`, then refuses the whole host if ANY address is blocked.

    Refusing rather than filtering: a name that mixes public and internal addresses is a
    misconfiguration or an attack, and a partial answer would hide it. The `RowError` is
    not an OSError, so aiohttp (3.14; tests/test_netguard.py checks) lets it out of `session.get`
    unwrapped, and fetch.py reports it as is.
    """

    def __init__(self, policy: AddressPolicy, inner: AbstractResolver | None = None):
        self.policy = policy
        self.inner = inner or aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        infos = await self.inner.resolve(host, port, family)
        for info in infos:
            try:
                ip = ipaddress.ip_address(info["host"])
            except ValueError:
                detail = f"{host} resolves to {info['host']!r}, not an IP address"
                raise RowError(BLOCKED_ADDRESS, detail) from None
            self.policy.check_ip(ip, host)
        return infos

    async def close(self) -> None:
        await self.inner.close()


def make_url_check(policy: AddressPolicy) -> UrlCheck:
    """`ImageFetcher`'s url_check: http(s) only, and IP-address hosts judged by `policy`.

    Host names are left to `GuardedResolver`, which sees what they resolve to.
    """

    async def url_check(url: yarl.URL) -> None:
        if url.scheme not in HTTP_SCHEMES:
            raise RowError(UNSUPPORTED_SCHEME, f"'{url.scheme}' URLs are not fetched")
        host = url.raw_host
        if not host:
            raise RowError(INVALID_URL, f"{url} has no host")
        ip = parse_ip_host(host)
        if ip is None:
            policy.check_host_name(host)
        else:
            policy.check_ip(ip, host)

    return url_check


def guarded_fetcher_parts(
    policy: AddressPolicy, cfg: FetchConfig, inner: AbstractResolver | None = None
) -> tuple[UrlCheck, aiohttp.TCPConnector]:
    """``(url_check, connector)`` for ``ImageFetcher(cfg, url_check=..., connector=...)``.

    Call inside the running event loop. No DNS cache: every new connection resolves
    and is checked afresh, so a cached answer never outlives a policy decision.
    """
    connector = aiohttp.TCPConnector(
        resolver=GuardedResolver(policy, inner),
        limit=cfg.max_in_flight,
        limit_per_host=0,
        use_dns_cache=False,
    )
    return make_url_check(policy), connector
