"""Refusing internal addresses when fetching user-supplied URLs (SSRF protection).

Two checks, both needed. `make_url_check` runs before every hop's connection and
judges hosts that are IP addresses, in any spelling: aiohttp never hands those to
a resolver. `GuardedResolver` sits in the connector and judges every address a
host name resolves to; aiohttp connects only to addresses it returned, so the
address checked is the address connected to (no DNS-rebinding window).
Nothing here is an allowlist of the outside world: only globally routable
unicast passes, unless `AddressPolicy.allow` names the host or its network, and
only on the ports the policy allows (80 and 443 unless widened).

Fail closed: a host that aiohttp would connect to as an IP literal (any host with
a ``:``, or digits and dots only) must read as exactly one address here, or the
URL is refused. aiohttp hands such hosts to the socket layer unresolved, so a
spelling this module could not read (``[::1%25]``: an empty zone id) would reach
whatever the C library makes of it.
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
from .fetch import AnsweringResolver, UrlCheck
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
            digits, base = lowered[2:], 16  # "0x" alone is no number to inet_aton
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


def literal_address(host: str) -> IPAddress | None:
    """The one address `host` (a URL's raw host) denotes if it is an IP literal; None for a host name.

    Fail closed: a host that aiohttp would connect to unresolved (one with a ``:``, or
    only digits and dots) and that does not read here as exactly one address is refused,
    as is any other host with a percent sign (no DNS name has one, and a resolver
    would look the escapes up undecoded, where we would judge them decoded). Zone ids are refused
    outright rather than cut: a zone names an interface of this machine, and no image a
    caller may ask for lives behind one.
    """
    if ":" in host:
        if "%" in host:
            raise RowError(BLOCKED_ADDRESS, f"{host} has an IPv6 zone id; zone ids are not fetched")
        try:
            return ipaddress.IPv6Address(host)
        except ValueError:
            raise RowError(INVALID_URL, f"{host!r} is not an IPv6 address") from None
    if "%" in host:  # a resolver looks the escapes up as they are; we would read them decoded
        raise RowError(INVALID_URL, f"{host!r} has percent-escapes in its host")
    ip = parse_ip_host(host)
    if ip is None and host.replace(".", "").isdigit():
        raise RowError(INVALID_URL, f"{host!r} is neither a host name nor an IP address")
    return ip


_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?")


def _is_host_name(entry: str) -> bool:
    """DNS labels, and not an odd IPv4 spelling (those must be written as plain IPs)."""
    labels = entry.lower().removesuffix(".").split(".")
    return all(_LABEL.fullmatch(label) for label in labels) and parse_ip_host(entry) is None


def is_localhost_name(host: str) -> bool:
    """``localhost`` and every name under ``.localhost`` (RFC 6761: they always mean this machine)."""
    key = _name_key(host)
    return key == "localhost" or key.endswith(".localhost")


# The service fetches these ports unless told otherwise: the web's own. Any other port on a
# public address may be SSH, SMTP, Redis or memcached, which a scoring service has no reason to reach.
DEFAULT_PORTS = (80, 443)
# Widest networks an allowlist entry may name without `allow_wide_networks`: a /8 is already
# 16 million IPv4 addresses, and "10.0.0.1/0" (host bits set, prefix 0) would silently open everything.
WIDEST_PREFIX = {4: 8, 6: 32}


@dataclass(frozen=True)
class AllowEntry:
    """One allowlist entry: a host name or an IP network, on one port or on the policy's ports (None)."""

    name: str | None
    network: IPNetwork | None
    port: int | None

    @classmethod
    def parse(cls, entry: str, allow_wide_networks: bool = False) -> AllowEntry:
        """``host``, ``host:port``, ``IP``, ``IP:port``, ``[IPv6]:port`` or a CIDR network; ValueError if not."""
        host, port = _split_port(entry)
        if "/" in host:
            return cls(None, _strict_network(entry, host, allow_wide_networks), port)
        try:
            return cls(None, ipaddress.ip_network(host), port)
        except ValueError:
            pass
        if not _is_host_name(host):
            raise ValueError(
                f"allowlist entry {entry!r} is not a host name, a plain IP address or a CIDR network"
            )
        return cls(_name_key(host), None, port)

    def matches(self, host: str, ip: IPAddress | None = None) -> bool:
        if self.network is None:
            return _name_key(host) == self.name
        return ip is not None and ip.version == self.network.version and ip in self.network


def _split_port(entry: str) -> tuple[str, int | None]:
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        if rest and not rest.startswith(":"):
            raise ValueError(f"allowlist entry {entry!r} is not [IPv6] or [IPv6]:port")
        return host, _port(entry, rest[1:]) if rest else None
    if entry.count(":") == 1:
        host, _, port = entry.partition(":")
        return host, _port(entry, port)
    return entry, None


def _port(entry: str, text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"allowlist entry {entry!r} has a port that is not 1-65535")
    return int(text)


def _strict_network(entry: str, text: str, allow_wide: bool) -> IPNetwork:
    try:
        network = ipaddress.ip_network(text)
    except ValueError as exc:
        if "host bits set" in str(exc):
            suggestion = ipaddress.ip_network(text, strict=False)
            raise ValueError(f"allowlist entry {entry!r} has host bits set (the network is {suggestion})") from None
        raise ValueError(f"allowlist entry {entry!r} is not a CIDR network: {exc}") from None
    widest = WIDEST_PREFIX[network.version]
    if network.prefixlen < widest and not allow_wide:
        raise ValueError(
            f"allowlist entry {entry!r} is wider than /{widest}; pass --allow-wide-networks if you mean it"
        )
    return network


@dataclass(frozen=True)
class AddressPolicy:
    """Which destinations the service may fetch: public addresses on `ports`, plus the allowlist.

    An entry allows a host name, an IP or a CIDR network that is internal, on `ports`,
    or on the one port it names (``images.internal:8080``). A name entry allows whatever
    that name resolves to, but only when the URL says that name; an IP or network entry
    allows those addresses under any name. `ports` None: any port (no port policy).
    """

    allow: tuple[str, ...] = ()
    allowlist_only: bool = False  # refuse everything not on the allowlist, public addresses too
    ports: tuple[int, ...] | None = DEFAULT_PORTS
    allow_wide_networks: bool = False  # let an entry name a network wider than WIDEST_PREFIX
    _entries: tuple[AllowEntry, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        entries = tuple(AllowEntry.parse(entry, self.allow_wide_networks) for entry in self.allow)
        object.__setattr__(self, "_entries", entries)

    @classmethod
    def from_strings(cls, entries: Iterable[str], allowlist_only: bool = False,
                     ports: Iterable[int] | None = DEFAULT_PORTS, allow_wide_networks: bool = False) -> AddressPolicy:
        """From config or CLI values: entries are stripped, blank ones dropped."""
        return cls(tuple(e.strip() for e in entries if e.strip()), allowlist_only,
                   None if ports is None else tuple(sorted(set(ports))), allow_wide_networks)

    def _allowed_by_entry(self, host: str, port: int, ip: IPAddress | None = None) -> bool:
        return any(
            entry.matches(host, ip) and (entry.port == port if entry.port is not None else self._port_open(port))
            for entry in self._entries
        )

    def _port_open(self, port: int) -> bool:
        return self.ports is None or port in self.ports

    def _refuse_port(self, host: str, port: int) -> None:
        allowed = ", ".join(map(str, self.ports or ()))
        raise RowError(BLOCKED_ADDRESS, f"{host}: port {port} is not fetched (allowed: {allowed})")

    def check_host_name(self, host: str, port: int) -> None:
        """Refuse, before any lookup, a name that nothing on the allowlist could let through."""
        listed = any(entry.name == _name_key(host) for entry in self._entries)
        if self.allowlist_only and not listed:
            raise RowError(BLOCKED_ADDRESS, f"{host} is not on the allowlist")
        if is_localhost_name(host) and not listed:
            raise RowError(BLOCKED_ADDRESS, f"{host} is a localhost name")
        if not self._port_open(port) and not any(entry.port == port for entry in self._entries):
            self._refuse_port(host, port)

    def check_ip(self, ip: IPAddress, host: str, port: int) -> None:
        """Raise `RowError` (blocked_address) unless `host` may connect to `ip` on `port`."""
        if self._allowed_by_entry(host, port, ip):
            return
        if self.allowlist_only:
            raise RowError(BLOCKED_ADDRESS, f"{host} ({ip}) is not on the allowlist")
        if not self._port_open(port):
            self._refuse_port(host, port)
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
        self.inner = AnsweringResolver(inner)

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
            self.policy.check_ip(ip, host, port)
        return infos

    async def close(self) -> None:
        await self.inner.close()


def make_url_check(policy: AddressPolicy) -> UrlCheck:
    """`ImageFetcher`'s url_check: http(s) only, IP-literal hosts and ports judged by `policy`.

    Host names are left to `GuardedResolver`, which sees what they resolve to, except
    those no resolution could make acceptable (localhost names, unlisted names in
    allowlist-only mode, ports nothing allows): those are refused without a lookup.
    """

    async def url_check(url: yarl.URL) -> None:
        if url.scheme not in HTTP_SCHEMES:
            raise RowError(UNSUPPORTED_SCHEME, f"'{url.scheme}' URLs are not fetched")
        host = url.raw_host
        if not host:
            raise RowError(INVALID_URL, f"{url} has no host")
        ip = literal_address(host)
        if ip is None:
            policy.check_host_name(host, url.port)  # type: ignore[arg-type]  # http(s): yarl fills the default port
        else:
            policy.check_ip(ip, host, url.port)  # type: ignore[arg-type]  # (never None here)

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
