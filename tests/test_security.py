"""The service's guard tried as an attacker would, without Ray: hostile URL forms, the port
policy, the allowlist's refusals, inline caps, error texts, opt-outs and the memory bound.

Network rule: every connection goes to 127.0.0.1, to servers these tests start and count.
Forms that denote other addresses are checked through the guard's own functions and a stub
resolver; "refused" always means "refused with zero connections", counted by the server.
"""

from __future__ import annotations

import asyncio
import io
import ipaddress
import json
import socket
import subprocess
import sys
import threading
import urllib.parse

import aiohttp
import aiohttp.helpers
import pytest
import yarl
from conftest import REPO
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from loopback import RawServer
from PIL import Image
from test_netguard import PHOTO, StubResolver, guarded_fetch

from tis_ray import errors
from tis_ray.config import FetchConfig
from tis_ray.errors import RowError
from tis_ray.fetch import ImageFetcher
from tis_ray.http_api import public_error_text
from tis_ray.netguard import (
    AddressPolicy,
    literal_address,
    make_url_check,
)
from tis_ray.prepare import ImagePreparer
from tis_ray.preprocess import PreprocessSpec
from tis_ray.sources import ImageSource, classify_image_ref

FAST = FetchConfig(timeout_s=3.0, retries=0, max_redirects=3)
SPEC = PreprocessSpec(shortest_edge=32, crop_size=(32, 32))

# --- hostile forms, direct and as a redirect's Location ------------------------------------

# (host as written in the URL, the kind it must be refused with). Every form denotes this
# machine (loopback) or cannot be read as one exact address; each URL names the counting
# server's port, so a form that slipped through would show up as a connection there.
HOSTILE_HOSTS = [
    ("[::ffff:127.0.0.1%25]", errors.BLOCKED_ADDRESS),  # the empty zone id aiohttp passed to getaddrinfo
    ("[::1%25]", errors.BLOCKED_ADDRESS),
    ("[::1%25lo]", errors.BLOCKED_ADDRESS),
    ("[::1%251]", errors.BLOCKED_ADDRESS),
    ("[::ffff:7f00:1%25eth0]", errors.BLOCKED_ADDRESS),
    ("[fe80::1%25lo]", errors.BLOCKED_ADDRESS),
    ("[::1%2525]", errors.BLOCKED_ADDRESS),
    ("[v1.127.0.0.1]", errors.INVALID_URL),  # IPvFuture
    ("[v7.fe80::1]", errors.INVALID_URL),
    ("[::1]", errors.BLOCKED_ADDRESS),
    ("[0:0:0:0:0:0:0:1]", errors.BLOCKED_ADDRESS),
    ("[::ffff:127.0.0.1]", errors.BLOCKED_ADDRESS),
    ("[::127.0.0.1]", errors.BLOCKED_ADDRESS),
    ("[::ffff:0:7f00:1]", errors.BLOCKED_ADDRESS),
    ("localhost", errors.BLOCKED_ADDRESS),
    ("LOCALHOST.", errors.BLOCKED_ADDRESS),
    ("images.localhost", errors.BLOCKED_ADDRESS),
    ("127.0.0.1", errors.BLOCKED_ADDRESS),
    ("127.1", errors.BLOCKED_ADDRESS),
    ("2130706433", errors.BLOCKED_ADDRESS),
    ("0x7f.1", errors.BLOCKED_ADDRESS),
    ("0177.0.0.01", errors.BLOCKED_ADDRESS),
    ("127.000.000.001", errors.BLOCKED_ADDRESS),
    ("127.0.0.1.", errors.BLOCKED_ADDRESS),
    ("%31%32%37.0.0.1", errors.INVALID_URL),
    ("08.0.0.1", errors.INVALID_URL),  # not octal, not decimal: glibc and Python disagree on it
    ("1.2.3.4.5", errors.INVALID_URL),
    ("127.0.0.256", errors.INVALID_URL),
    ("127%2e0%2e0%2e1", errors.INVALID_URL),
    ("a%3a%3a1", errors.INVALID_URL),
]


def _refusal(url: str, policy: AddressPolicy, stub: StubResolver) -> RowError:
    """What the service does with `url`: classify it as it arrives, then fetch it through the guard."""
    try:
        source = classify_image_ref(url, base_dir="/")
    except RowError as error:
        return error
    result = guarded_fetch(source.location, policy, stub)
    assert isinstance(result, RowError), f"{url} was fetched"
    return result


@pytest.mark.parametrize("host, kind", HOSTILE_HOSTS)
def test_hostile_hosts_are_refused_without_a_connection(loopback, host, kind):
    stub = StubResolver({})  # any name lookup fails; none must even be asked for these forms
    url = f"http://{host}:{loopback.port}/photo/chelsea.jpg"
    # Any port is allowed here, so that each refusal is about the host, not the port policy.
    error = _refusal(url, AddressPolicy(ports=None), stub)
    assert error.kind == kind, error
    assert loopback.connections == 0 and loopback.requests == []
    assert stub.calls == []


@pytest.mark.parametrize("host, kind", HOSTILE_HOSTS)
def test_hostile_hosts_in_a_redirect_are_refused_without_a_connection(loopback, hop_server, host, kind):
    """An allowlisted host answers 302 to the hostile form: the hop is refused, and the
    target server sees nothing."""
    stub = StubResolver({"allowed.test": ["127.0.0.1"]})
    target = f"http://{host}:{loopback.port}/photo/chelsea.jpg"
    url = f"http://allowed.test:{hop_server.port}/goto?url={urllib.parse.quote(target, safe='')}"
    result = guarded_fetch(url, AddressPolicy(("allowed.test",), ports=None), stub)
    assert isinstance(result, RowError) and result.kind == kind, result
    assert len(hop_server.requests) == 1  # the hop itself, and nothing after it
    assert loopback.connections == 0 and loopback.requests == []
    assert stub.calls == ["allowed.test"]


# --- the property: any host aiohttp accepts is judged as the address it would connect to ----

_HEX = "0123456789abcdef"
_ipv6_text = st.ip_addresses(v=6).flatmap(lambda ip: st.sampled_from([
    ip.compressed, ip.exploded, ip.compressed.upper(),
    # with an IPv4 tail, as "::ffff:1.2.3.4" is written
    ip.compressed if ip.ipv4_mapped is None else f"::ffff:{ip.ipv4_mapped}",
]))
_zone = st.one_of(st.just(""), st.text(alphabet=_HEX + "lo%", max_size=4))
_bracketed = st.builds(lambda a, z, with_zone: f"[{a}%25{z}]" if with_zone else f"[{a}]",
                       _ipv6_text, _zone, st.booleans())
_ipv4_spelling = st.builds(
    lambda parts, dot: ".".join(parts) + ("." if dot else ""),
    st.lists(st.one_of(st.integers(0, 300).map(str), st.integers(0, 255).map(hex),
                       st.integers(0, 255).map(lambda n: "0" + oct(n)[2:]), st.just("08"),
                       st.integers(0, 2**32).map(str)), min_size=1, max_size=5),
    st.booleans(),
)
_junk = st.text(alphabet=_HEX + "x.:%[]v-", min_size=1, max_size=24)


def _numeric_address(host: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int] | None:
    """Where the C library would connect for `host` as a numeric address (no lookup), with the scope id."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        info = socket.getaddrinfo(host, 80, family, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST)
    except (socket.gaierror, UnicodeError, ValueError):
        return None
    sockaddr = info[0][4]
    return ipaddress.ip_address(sockaddr[0].split("%")[0]), (sockaddr[3] if family == socket.AF_INET6 else 0)


@settings(max_examples=600, deadline=None)
@given(st.one_of(_bracketed, _ipv4_spelling, _junk))
def test_guard_judges_exactly_the_address_a_connection_would_reach(written):
    try:
        url = yarl.URL(f"http://{written}:8080/x.jpg")
        host = url.raw_host
    except Exception:  # noqa: BLE001 - yarl refuses it: aiohttp never gets this far
        assume(False)
    assume(bool(host))
    try:
        classify_image_ref(str(url), base_dir="/")
        judged = literal_address(host)
    except RowError:
        return  # refused: always safe
    if (aiohttp.helpers.is_ip_address(host) and ":" not in host
            and not aiohttp.helpers.is_canonical_ipv4_address(host)):
        return  # aiohttp refuses these itself (test_aiohttp_refuses_non_canonical_ipv4 keeps it so)
    numeric = _numeric_address(host)
    if numeric is None:
        # Not a number to the C library: aiohttp asks the guarded resolver for it, which judges
        # every address it resolves to. (The guard may refuse it earlier: it also reads forms
        # such as "0x0." as a browser would, as an address, and judges that too.)
        assert not aiohttp.helpers.is_ip_address(host), (host, judged)
    else:
        address, scope = numeric
        assert (address, scope) == (judged, 0), (host, judged, numeric)


def test_aiohttp_refuses_non_canonical_ipv4():
    """The floor in pyproject.toml (aiohttp>=3.14.1) is where aiohttp started refusing inet_aton
    spellings (2130706433, 127.1) itself instead of passing them to the system resolver; the
    property above relies on it for the spellings it skips."""
    from aiohttp.client_exceptions import InvalidUrlClientError

    async def resolve(host: str):
        connector = aiohttp.TCPConnector()
        try:
            return await connector._resolve_host(host, 80)
        finally:
            await connector.close()

    for spelling in ("2130706433", "127.1", "0177.0.0.1", "127.0.0.1."):
        with pytest.raises(InvalidUrlClientError):
            asyncio.run(resolve(spelling))
    assert asyncio.run(resolve("127.0.0.1"))[0]["host"] == "127.0.0.1"


# --- the port policy -------------------------------------------------------------------------


def test_ports_other_than_80_and_443_are_refused_unless_allowed(loopback):
    url = f"http://127.0.0.1:{loopback.port}/photo/chelsea.jpg"
    stub = StubResolver({"images.test": ["127.0.0.1"]})
    by_name = f"http://images.test:{loopback.port}/photo/chelsea.jpg"
    for policy, target in [(AddressPolicy(("127.0.0.1",)), url), (AddressPolicy(("images.test",)), by_name),
                           (AddressPolicy(("127.0.0.1:1",)), url)]:
        result = guarded_fetch(target, policy, stub)
        assert isinstance(result, RowError) and result.kind == errors.BLOCKED_ADDRESS, result
        assert f"port {loopback.port} is not fetched" in result.detail
    assert loopback.connections == 0 and stub.calls == []  # refused before the lookup, too

    for policy, target in [(AddressPolicy((f"127.0.0.1:{loopback.port}",)), url),
                           (AddressPolicy((f"images.test:{loopback.port}",)), by_name),
                           (AddressPolicy(("127.0.0.1",), ports=(80, 443, loopback.port)), url)]:
        assert guarded_fetch(target, policy, stub) == PHOTO.read_bytes()


@pytest.mark.parametrize("port", [22, 25, 6379, 11211, 8080])
def test_public_addresses_are_fetched_on_80_and_443_only(port):
    policy = AddressPolicy()
    check = make_url_check(policy)
    for allowed in (80, 443):
        policy.check_ip(ipaddress.ip_address("93.184.216.34"), "example.com", allowed)
    with pytest.raises(RowError, match=f"port {port} is not fetched"):
        asyncio.run(check(yarl.URL(f"http://93.184.216.34:{port}/x.jpg")))
    with pytest.raises(RowError, match=f"port {port} is not fetched"):
        policy.check_host_name("example.com", port)
    AddressPolicy(ports=None).check_ip(ipaddress.ip_address("93.184.216.34"), "example.com", port)


# --- the allowlist's refusals ------------------------------------------------------------------


@pytest.mark.parametrize("entry, words", [
    ("10.0.0.1/0", "host bits set (the network is 0.0.0.0/0)"),
    ("10.0.0.1/8", "host bits set (the network is 10.0.0.0/8)"),
    ("0.0.0.0/0", "wider than /8"),
    ("8.0.0.0/7", "wider than /8"),
    ("::/0", "wider than /32"),
    ("2001::/16", "wider than /32"),
    ("images.internal:0", "port that is not 1-65535"),
    ("images.internal:http", "port that is not 1-65535"),
    ("[::1]x", "is not [IPv6] or [IPv6]:port"),
])
def test_lax_allowlist_entries_are_refused(entry, words):
    with pytest.raises(ValueError) as refused:
        AddressPolicy.from_strings([entry])
    assert words in str(refused.value)


def test_wide_networks_need_the_explicit_flag_and_entries_may_carry_ports():
    policy = AddressPolicy.from_strings(["0.0.0.0/0", "::/0"], allow_wide_networks=True)
    policy.check_ip(ipaddress.ip_address("169.254.169.254"), "metadata", 80)
    policy = AddressPolicy.from_strings(["10.0.0.0/8", "[fd00::1]:8443", "images.internal:8080", "10.1.2.3:9000"])
    policy.check_ip(ipaddress.ip_address("fd00::1"), "x", 8443)
    policy.check_ip(ipaddress.ip_address("10.9.9.9"), "images.internal", 8080)
    policy.check_ip(ipaddress.ip_address("10.1.2.3"), "x", 9000)
    for ip, host, port in [("fd00::1", "x", 80), ("10.9.9.9", "other", 8080), ("10.1.2.4", "x", 9000)]:
        with pytest.raises(RowError):
            policy.check_ip(ipaddress.ip_address(ip), host, port)


def test_tis_ray_serve_refuses_a_lax_allowlist_at_start_up(tmp_path):
    done = subprocess.run([sys.executable, "-m", "tis_ray", "serve", "--model", str(tmp_path / "none"),
                           "--allow-hosts", "images.internal", "10.0.0.1/0"],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert lines == ["tis-ray: error: allowlist entry '10.0.0.1/0' has host bits set (the network is 0.0.0.0/0)"]


# --- a resolver that answers nothing ------------------------------------------------------------


def test_a_name_that_resolves_to_no_address_is_a_connection_error():
    stub = StubResolver({"empty.test": []})
    result = guarded_fetch("http://empty.test/x.jpg", AddressPolicy(), stub)
    assert isinstance(result, RowError) and result.kind == errors.CONNECTION_ERROR, result
    assert "empty.test" in result.detail and "DNS" in result.detail


# --- caps on what a request brings ---------------------------------------------------------------


def _png(width: int, height: int, mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height), (200, 10, 10, 255)[: len(mode)]).save(buffer, "PNG")
    return buffer.getvalue()


def test_inline_bytes_are_held_to_the_byte_cap():
    data = _png(64, 64)
    cfg = FetchConfig(max_bytes=len(data) - 1)

    async def prepare(cap: FetchConfig):
        preparer = ImagePreparer(cap, (SPEC,))
        try:
            return (await preparer.from_bytes(data))[0]
        except RowError as error:
            return error
        finally:
            await preparer.close()

    refused = asyncio.run(prepare(cfg))
    assert isinstance(refused, RowError) and refused.kind == errors.TOO_LARGE
    assert asyncio.run(prepare(FetchConfig(max_bytes=len(data)))).shape == (32, 32, 3)


def test_peak_memory_under_hostile_images_is_bounded_by_the_pixel_cap(tiny_model):
    """scripts/hostile_memory.py at an eighth of the service's scale: flat RGBA PNGs (25 KB each)
    just under a 5 M-pixel cap, two at once against 16 requests of 4, and the same just over it.
    A replica decodes two at a time, so the peak must not grow with the requests; over the cap
    nothing is decoded; and what the decodes used is given back afterwards."""
    cap = 5_000_000

    def measure(side: int, requests: int, images: int) -> dict:
        done = subprocess.run([sys.executable, str(REPO / "scripts" / "hostile_memory.py"), "--side", str(side),
                               "--mode", "RGBA", "--requests", str(requests), "--images", str(images),
                               "--max-pixels", str(cap), "--model", tiny_model],
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        result = json.loads(done.stdout)
        return {**result, "growth": result["peak_mib"] - result["before_mib"]}

    two, many, over = measure(2200, 1, 2), measure(2200, 16, 4), measure(2250, 16, 4)
    assert two["outcomes"] == many["outcomes"] == ["scored"] and over["outcomes"] == ["decompression_bomb"]
    assert two["growth"] > 2 * 4 * cap / 2**20  # two RGBA decodes really were in memory at once ...
    assert many["growth"] < 1.25 * two["growth"] + 16, (two, many)  # ... and 64 cost what 2 did
    assert over["growth"] < 16, over  # refused from the header: nothing decoded
    assert many["after_mib"] - many["before_mib"] < 32, many  # given back


# --- error texts: the kind and a fixed detail, nothing from behind the service -------------------


def test_public_error_text_says_nothing_about_the_inside():
    cfg = FetchConfig()
    leaky = [
        RowError(errors.http_kind(403), "Forbidden-internal-build-7f3a tenant=acme"),
        RowError(errors.CONNECTION_ERROR, "ClientResponseError: 400, message='Invalid method encountered:\\n\\n"
                                          "  b'SSH-2.0-OpenSSH_9.6 secret-host'"),
        RowError(errors.BLOCKED_ADDRESS, "db01.corp.internal resolves to 10.20.30.40, a private address"),
        RowError(errors.DECODE_ERROR, "not a supported image (HTML)"),
        RowError(errors.INVALID_URL, "bad redirect Location 'http://10.20.30.40:6379/'"),
        RowError.internal(KeyError("/srv/secret/path")),
    ]
    for error in leaky:
        text = public_error_text(error, cfg)
        assert text.startswith(f"{error.kind}: ")
        for secret in ("7f3a", "acme", "SSH", "secret", "db01", "10.20.30.40", "HTML", "6379"):
            assert secret not in text, text
    assert public_error_text(leaky[0], cfg) == "http_403: the image host answered HTTP 403"
    assert public_error_text(RowError(errors.TOO_LARGE, "x"), cfg) == "too_large: the image is over 20971520 bytes"


def test_a_private_resolution_is_refused_and_its_address_is_not_told(loopback):
    stub = StubResolver({"db01.corp.internal": ["10.20.30.40"]})
    error = guarded_fetch("http://db01.corp.internal/x.jpg", AddressPolicy(), stub)
    assert error.kind == errors.BLOCKED_ADDRESS and "10.20.30.40" in error.detail  # the log has it
    assert "10.20.30.40" not in public_error_text(error, FetchConfig())  # the caller does not


# --- opt-out: decided from the headers, the body never sent ---------------------------------------


class HeldBodyServer(RawServer):
    """Answers 200 with the given headers at once, then holds the body until `release` is set,
    and counts the body bytes it managed to send."""

    def __init__(self, headers: list[tuple[str, str]]):
        self.body = PHOTO.read_bytes()
        self.headers = headers
        self.release = threading.Event()
        self.body_bytes_sent = 0
        super().__init__(self._reply)

    def _reply(self, conn: socket.socket):
        conn.recv(65536)
        head = "".join(f"{k}: {v}\r\n" for k, v in
                       [("Content-Type", "image/jpeg"), ("Content-Length", str(len(self.body))), *self.headers])
        conn.sendall(f"HTTP/1.1 200 OK\r\n{head}\r\n".encode())
        if not self.release.wait(10):
            return
        try:
            for start in range(0, len(self.body), 4096):
                conn.sendall(self.body[start:start + 4096])
                self.body_bytes_sent += min(4096, len(self.body) - start)
        except OSError:
            pass

    def close(self):
        self.release.set()
        super().close()


@pytest.mark.parametrize("header", ["noai", "noimageai", "NoAI, noarchive", "tis-ray: noimageai", "noindex",
                                    "noimageindex", "none", "max-snippet: 20, noai"])
def test_opted_out_images_are_refused_before_the_body_is_sent(header):
    server = HeldBodyServer([("X-Robots-Tag", header)])
    try:
        async def fetch(cfg: FetchConfig):
            fetcher = ImageFetcher(cfg)
            try:
                return await fetcher.fetch(ImageSource("http", f"http://127.0.0.1:{server.port}/x.jpg"))
            except RowError as error:
                return error
            finally:
                await fetcher.close()

        refused = asyncio.run(fetch(FAST))
        assert isinstance(refused, RowError) and refused.kind == errors.OPTED_OUT, refused
        assert server.body_bytes_sent == 0  # decided while the server still held the whole body
        server.release.set()
        assert asyncio.run(fetch(FetchConfig(timeout_s=3.0, retries=0, honor_opt_out=False))) == server.body
    finally:
        server.close()


@pytest.mark.parametrize("header", ["googlebot: noai", "noarchive, nosnippet", "all",
                                    "unavailable_after: 2030-01-01"])
def test_directives_that_do_not_opt_out_of_us_are_fetched(header):
    server = HeldBodyServer([("X-Robots-Tag", header)])
    server.release.set()
    try:
        async def fetch():
            fetcher = ImageFetcher(FAST)
            try:
                return await fetcher.fetch(ImageSource("http", f"http://127.0.0.1:{server.port}/x.jpg"))
            finally:
                await fetcher.close()

        assert asyncio.run(fetch()) == server.body
    finally:
        server.close()


def test_requests_identify_tis_ray():
    from tis_ray import __version__

    agent = FetchConfig().user_agent
    assert agent.startswith(f"tis-ray/{__version__} (+https://")


def test_a_batch_job_reports_opted_out_rows_and_counts_them(local_ray, tiny_model, image_server, tmp_path):
    """Batch honours the opt-out too: the row is kept, with its kind, and the stats file counts it."""
    from jobs import assert_stats_add_up, read_output

    from tis_ray import score_file
    from tis_ray.config import ModelConfig

    server = HeldBodyServer([("X-Robots-Tag", "noai")])
    try:
        source = tmp_path / "pairs.csv"
        source.write_text(f"image_url,caption\n{server.url('x.jpg')},a cat\n"
                          f"{image_server.url('photo/chelsea.jpg')},a cat\n")
        out = tmp_path / "scored.csv"
        score_file(str(source), str(out), model=ModelConfig(model=tiny_model, device="cpu", dtype="float32"),
                   fetch=FetchConfig(timeout_s=5, retries=0), progress=False)
        errors_out = read_output(out).column("error").to_pylist()
        assert errors_out[0] == "opted_out: X-Robots-Tag: noai" and not errors_out[1]
        assert server.body_bytes_sent == 0
        stats = assert_stats_add_up(out, 2)
        assert stats["errors_by_kind"] == {"opted_out": 1}
    finally:
        server.close()


def test_an_unexpected_exception_costs_its_row_an_internal_error_and_the_batch_goes_on(photos):
    """README: hostile input costs one row, never the job. A preparer that raises something
    no stage expects (a bug's ZeroDivisionError) for one image: that row gets
    ``internal_error`` naming the exception, and its neighbours' pixels are the ones they get
    in a batch of their own."""
    import numpy as np
    import pyarrow as pa

    from tis_ray.columns import FETCH_ERROR, PIXELS
    from tis_ray.fetch_stage import FetchStage

    def run(refs: list[str]) -> pa.Table:
        async def main():
            stage = FetchStage("image", "caption", "/", FAST, (SPEC,))
            real = stage.preparer.from_source

            async def from_source(source):
                if source.location.endswith("rocket.jpg"):
                    raise ZeroDivisionError("division by zero")
                return await real(source)

            stage.preparer.from_source = from_source
            try:
                return await stage(pa.table({"image": refs, "caption": ["a photo"] * len(refs)}))
            finally:
                await stage.preparer.close()
        return asyncio.run(main())

    good = [str(photos["chelsea"]), str(photos["coffee"])]
    mixed = run([good[0], str(photos["rocket"]), good[1]])
    alone = run(good)
    assert mixed.column(FETCH_ERROR).to_pylist() == [None, "internal_error: ZeroDivisionError: division by zero", None]
    pixels = np.array(mixed.column(PIXELS).to_pylist(), dtype=np.uint8)
    assert (pixels[[0, 2]] == np.array(alone.column(PIXELS).to_pylist(), dtype=np.uint8)).all()
    assert pixels[0].any() and pixels[2].any()
    assert not pixels[1].any()  # the failed row carries no pixels
