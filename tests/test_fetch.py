"""fetch_bytes against real servers on 127.0.0.1 only: limits, retries, redirects, url_check.

`image_server` (conftest) covers the plain routes; `edge_server` below adds the
ones conftest does not have (429 + Retry-After, loops, odd Locations, chunked or
trickling bodies, mid-body resets) and records request headers.
"""

from __future__ import annotations

import asyncio
import email.utils
import os
import socket
import struct
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import yarl

from tis_ray import errors
from tis_ray.config import FetchConfig
from tis_ray.errors import RowError
from tis_ray.fetch import fetch_bytes, open_session
from tis_ray.sources import ImageSource

PHOTOS = Path(__file__).resolve().parent.parent / "examples" / "images"

# Small limits so that every failure mode is quick; tests override what they probe.
FAST = FetchConfig(timeout_s=3.0, retries=2, backoff_s=0.01, retry_after_cap_s=1.0, max_redirects=3)


# --- a second loopback server for routes conftest does not have ----------------


class EdgeServer:
    """Threaded HTTP/1.1 server on 127.0.0.1; routes are ``/<route>?<query>``."""

    def __init__(self):
        self.requests: list[str] = []  # full request paths, query included
        self.headers: list[dict[str, str]] = []
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{path.lstrip('/')}"

    def count(self, path: str) -> int:
        """How many requests had exactly this path (query included)."""
        return sum(1 for p in self.requests if p == "/" + path.lstrip("/"))

    def _next(self, key: str) -> int:
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + 1
            return self._counts[key]

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                server.requests.append(self.path)
                server.headers.append({k.lower(): v for k, v in self.headers.items()})
                parts = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(parts.query).items()}
                try:
                    getattr(self, f"route_{parts.path.strip('/')}")(**query)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def send(self, status: int, body: bytes = b"", headers=()):
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                for key, value in headers:
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body)

            def route_photo(self, name="chelsea"):
                self.send(200, (PHOTOS / f"{name}.jpg").read_bytes(), [("Content-Type", "image/jpeg")])

            def route_retry_after(self, key, value, status="429", fails="1"):
                """`status` with ``Retry-After: value`` for the first `fails` requests of `key`, then a photo."""
                if server._next(f"retry_after/{key}") <= int(fails):
                    return self.send(int(status), b"slow down", [("Retry-After", value)])
                self.route_photo()

            def route_goto(self, location, status="302"):
                self.send(int(status), b"", [("Location", location)])

            def route_loop(self):
                self.send(302, b"", [("Location", "/loop")])

            def route_chunked(self, size, chunk="8192", delay="0"):
                """`size` bytes as a chunked body, no Content-Length; size -1 never ends."""
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                left, step = int(size), int(chunk)
                while left != 0:
                    n = step if left < 0 else min(step, left)
                    self.wfile.write(b"%x\r\n" % n + b"\xff" * n + b"\r\n")
                    self.wfile.flush()
                    left = left - n if left > 0 else left
                    time.sleep(float(delay))
                self.wfile.write(b"0\r\n\r\n")

            def route_until_close(self, size):
                """An HTTP/1.0-style body with no length: ends when the connection closes."""
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(b"\xff" * int(size))
                self.close_connection = True

            def route_reset(self, key):
                """Promise 100 kB, send 1 kB, then reset the connection (RST, not FIN)."""
                server._next(f"reset/{key}")
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", "100000")
                self.end_headers()
                self.wfile.write(b"\xff" * 1000)
                self.wfile.flush()
                self._reset()

            def route_hangup(self):
                """Close without any response."""
                self._reset()

            def _reset(self):
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()
                self.close_connection = True
                self.wfile = self.rfile = _Sink()

        return Handler


class _Sink:
    """Stands in for the socket files after a reset so the handler's cleanup does not fail."""

    def write(self, data):
        return len(data)

    def flush(self):
        pass

    def close(self):
        pass

    closed = False


@pytest.fixture(scope="module")
def edge_server() -> Iterator[EdgeServer]:
    server = EdgeServer()
    yield server
    server.close()


# --- helpers --------------------------------------------------------------------


async def _fetch(source: ImageSource, cfg: FetchConfig, url_check=None) -> bytes:
    async with open_session(cfg) as session:
        return await fetch_bytes(session, source, cfg, url_check)


def fetch(url: str, cfg: FetchConfig = FAST, url_check=None) -> bytes:
    assert url.startswith("http://127.0.0.1:"), "network tests talk to 127.0.0.1 only"
    return asyncio.run(_fetch(ImageSource("http", url), cfg, url_check))


def fetch_error(url: str, cfg: FetchConfig = FAST, url_check=None) -> RowError:
    with pytest.raises(RowError) as info:
        fetch(url, cfg, url_check)
    return info.value


def timed_error(url: str, cfg: FetchConfig = FAST) -> tuple[RowError, float]:
    start = time.monotonic()
    error = fetch_error(url, cfg)
    return error, time.monotonic() - start


def requests_for(image_server, path: str) -> int:
    return sum(1 for p in image_server.requests if p == "/" + path.lstrip("/"))


# --- success and status codes ------------------------------------------------------


def test_200_returns_exact_bytes(image_server, photos):
    assert fetch(image_server.url("photo/chelsea.jpg")) == photos["chelsea"].read_bytes()


def test_many_fetches_share_one_session(image_server, photos):
    async def run():
        async with open_session(FAST) as session:
            names = ["astronaut", "coffee", "rocket", "retina"]
            got = await asyncio.gather(
                *(fetch_bytes(session, ImageSource("http", image_server.url(f"photo/{n}.jpg")), FAST) for n in names)
            )
            return dict(zip(names, got))

    for name, data in asyncio.run(run()).items():
        assert data == photos[name].read_bytes()


def test_404_is_not_retried(image_server):
    before = requests_for(image_server, "status/404")
    error = fetch_error(image_server.url("status/404"))
    assert error.kind == "http_404"
    assert requests_for(image_server, "status/404") - before == 1


def test_other_4xx_are_not_retried(image_server):
    before = requests_for(image_server, "status/403")
    assert fetch_error(image_server.url("status/403")).kind == "http_403"
    assert requests_for(image_server, "status/403") - before == 1


@pytest.mark.parametrize("retries", [0, 1, 3])
def test_500_is_retried_then_reported(image_server, retries):
    cfg = FetchConfig(timeout_s=3.0, retries=retries, backoff_s=0.01)
    before = requests_for(image_server, "status/500")
    error = fetch_error(image_server.url("status/500"), cfg)
    assert error.kind == "http_500"
    assert requests_for(image_server, "status/500") - before == 1 + retries


def test_flaky_500_then_200_succeeds(image_server, photos):
    url = image_server.url("flaky/test-fetch-flaky/coffee.jpg")
    assert fetch(url) == photos["coffee"].read_bytes()
    assert image_server.hits["flaky/test-fetch-flaky"] == 2


def test_backoff_grows(image_server):
    # retries=2, backoff 0.1: waits ~0.1 then ~0.2 (+-20%), so at least 0.24s in all
    cfg = FetchConfig(timeout_s=3.0, retries=2, backoff_s=0.1)
    error, took = timed_error(image_server.url("status/503"), cfg)
    assert error.kind == "http_503"
    assert 0.24 <= took < 1.5


# --- 429 and Retry-After -------------------------------------------------------------


def test_429_retry_after_is_honoured(edge_server, photos):
    path = "retry_after?key=honour&value=0.2"
    start = time.monotonic()
    assert fetch(edge_server.url(path)) == photos["chelsea"].read_bytes()
    took = time.monotonic() - start
    assert edge_server.count(path) == 2
    assert 0.18 <= took < 1.5  # waited the header's 0.2s, not FAST's 0.01s backoff


def test_429_retry_after_is_capped(edge_server, photos):
    cfg = FetchConfig(timeout_s=3.0, retries=1, backoff_s=0.01, retry_after_cap_s=0.3)
    path = "retry_after?key=cap&value=3600"
    start = time.monotonic()
    assert fetch(edge_server.url(path), cfg) == photos["chelsea"].read_bytes()
    took = time.monotonic() - start
    assert 0.28 <= took < 1.5


def test_retry_after_is_capped_at_5_seconds_by_default(edge_server, photos):
    """README: a ``Retry-After`` is honoured up to 5 s unless told otherwise. A server asking
    for an hour is retried after about 5 s (by the real clock), well inside a 20 s timeout."""
    cfg = FetchConfig(timeout_s=20.0, retries=1, backoff_s=0.01)  # the cap left at its default
    path = "retry_after?key=default-cap&value=3600"
    start = time.monotonic()
    assert fetch(edge_server.url(path), cfg) == photos["chelsea"].read_bytes()
    took = time.monotonic() - start
    assert edge_server.count(path) == 2
    assert 4.8 <= took < 9.0


def test_retry_after_http_date_is_understood_and_capped(edge_server):
    cfg = FetchConfig(timeout_s=3.0, retries=1, backoff_s=0.01, retry_after_cap_s=0.3)
    when = email.utils.formatdate(time.time() + 60, usegmt=True).replace(" ", "%20").replace(",", "%2C")
    path = f"retry_after?key=date&value={when}"
    start = time.monotonic()
    fetch(edge_server.url(path), cfg)
    assert time.monotonic() - start >= 0.28


def test_retry_after_date_without_zone_is_gmt(edge_server):
    # asctime dates carry no zone and mean GMT; read as local time on a UTC+9 host they would
    # lie 9 hours in the past and the wait would collapse to 0 instead of the cap
    cfg = FetchConfig(timeout_s=3.0, retries=1, backoff_s=0.01, retry_after_cap_s=0.3)
    when = time.strftime("%a %b %d %H:%M:%S %Y", time.gmtime(time.time() + 60)).replace(" ", "%20")
    path = f"retry_after?key=asctime&value={when}"
    old_tz = os.environ.get("TZ")
    os.environ["TZ"] = "UTC-9"
    time.tzset()
    try:
        start = time.monotonic()
        fetch(edge_server.url(path), cfg)
        took = time.monotonic() - start
    finally:
        if old_tz is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old_tz
        time.tzset()
    assert took >= 0.28


@pytest.mark.parametrize("value", ["-5", "soon", "nan", "NaN"])
def test_odd_retry_after_values_do_not_stall(edge_server, photos, value):
    # a negative, unparseable or not-a-number header must neither hang the row nor skip the retry
    cfg = FetchConfig(timeout_s=1.0, retries=1, backoff_s=0.01, retry_after_cap_s=0.5)
    path = f"retry_after?key=odd-{value}&value={value}"
    assert fetch(edge_server.url(path), cfg) == photos["chelsea"].read_bytes()
    assert edge_server.count(path) == 2


def test_429_after_all_retries_is_reported(edge_server):
    cfg = FetchConfig(timeout_s=3.0, retries=2, backoff_s=0.01, retry_after_cap_s=0.05)
    path = "retry_after?key=always&value=0.01&fails=100"
    assert fetch_error(edge_server.url(path), cfg).kind == "http_429"
    assert edge_server.count(path) == 3


def test_503_retry_after_is_honoured(edge_server):
    path = "retry_after?key=503&value=0.2&status=503"
    start = time.monotonic()
    fetch(edge_server.url(path))
    assert time.monotonic() - start >= 0.18


# --- deadline -----------------------------------------------------------------------


def test_slow_server_times_out_on_time(image_server):
    cfg = FetchConfig(timeout_s=0.5, retries=0)
    error, took = timed_error(image_server.url("slow/5"), cfg)
    assert error.kind == errors.TIMEOUT
    assert 0.45 <= took < 0.5 + 0.5


def test_deadline_covers_retries(image_server):
    # 10 retries of 0.2s backoff and more would take seconds; the one deadline stops them
    cfg = FetchConfig(timeout_s=0.6, retries=10, backoff_s=0.2)
    error, took = timed_error(image_server.url("status/502"), cfg)
    assert error.kind == errors.TIMEOUT
    assert took < 0.6 + 0.5


def test_trickling_body_times_out(edge_server):
    # 1 kB every 0.1s for a 1 MB body: each read makes progress, but the image's deadline still holds
    cfg = FetchConfig(timeout_s=0.5, retries=0)
    error, took = timed_error(edge_server.url("chunked?size=1000000&chunk=1000&delay=0.1"), cfg)
    assert error.kind == errors.TIMEOUT
    assert took < 0.5 + 0.5


# --- byte cap --------------------------------------------------------------------------


def test_body_exactly_at_the_cap_is_fine(image_server):
    data = bytes(range(256)) * 4
    url = image_server.serve_bytes("test-fetch-exact", data)
    assert fetch(url, FetchConfig(timeout_s=3.0, max_bytes=len(data))) == data
    assert fetch_error(url, FetchConfig(timeout_s=3.0, max_bytes=len(data) - 1)).kind == errors.TOO_LARGE


def test_too_large_by_content_length(image_server):
    error = fetch_error(image_server.url("big/200000"), FetchConfig(timeout_s=3.0, max_bytes=100_000))
    assert error.kind == errors.TOO_LARGE
    assert "Content-Length" in error.detail


def test_too_large_chunked(edge_server):
    error = fetch_error(edge_server.url("chunked?size=300000"), FetchConfig(timeout_s=3.0, max_bytes=100_000))
    assert error.kind == errors.TOO_LARGE


def test_chunked_within_cap_is_fine(edge_server):
    assert fetch(edge_server.url("chunked?size=50000&chunk=7000")) == b"\xff" * 50000


def test_endless_chunked_body_stops_at_the_cap(edge_server):
    cfg = FetchConfig(timeout_s=3.0, max_bytes=200_000)
    error, took = timed_error(edge_server.url("chunked?size=-1&chunk=16384"), cfg)
    assert error.kind == errors.TOO_LARGE  # not a timeout: the stream is abandoned at the cap
    assert took < 2.0


def test_too_large_without_any_length(edge_server):
    error = fetch_error(edge_server.url("until_close?size=300000"), FetchConfig(timeout_s=3.0, max_bytes=100_000))
    assert error.kind == errors.TOO_LARGE


def test_body_until_close_within_cap(edge_server):
    assert fetch(edge_server.url("until_close?size=5000")) == b"\xff" * 5000


# --- connection failures ---------------------------------------------------------------


def free_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def test_connection_refused():
    cfg = FetchConfig(timeout_s=3.0, retries=1, backoff_s=0.01)
    error = fetch_error(f"http://127.0.0.1:{free_port()}/x.jpg", cfg)
    assert error.kind == errors.CONNECTION_ERROR


def test_reset_mid_body_is_a_connection_error(edge_server):
    cfg = FetchConfig(timeout_s=3.0, retries=1, backoff_s=0.01)
    path = "reset?key=mid-body"
    assert fetch_error(edge_server.url(path), cfg).kind == errors.CONNECTION_ERROR
    assert edge_server.count(path) == 2  # retried once, like any connection error


def test_hangup_without_response_is_a_connection_error(edge_server):
    cfg = FetchConfig(timeout_s=3.0, retries=0)
    assert fetch_error(edge_server.url("hangup"), cfg).kind == errors.CONNECTION_ERROR


def test_short_body_with_honest_length_is_returned(image_server, photos):
    # a truncated image is the decoder's business, not a fetch error
    data = photos["rocket"].read_bytes()
    assert fetch(image_server.url("truncated/rocket.jpg")) == data[: len(data) // 2]


# --- redirects -------------------------------------------------------------------------


def test_redirect_chain_within_the_limit(image_server, photos):
    assert fetch(image_server.url("redirect/3/astronaut.jpg")) == photos["astronaut"].read_bytes()


def test_too_many_redirects(image_server):
    before = len(image_server.requests)
    error = fetch_error(image_server.url("redirect/4/astronaut.jpg"))
    assert error.kind == errors.TOO_MANY_REDIRECTS
    assert len(image_server.requests) - before == FAST.max_redirects + 1  # and no retries


def test_no_redirects_allowed(image_server, photos):
    cfg = FetchConfig(timeout_s=3.0, max_redirects=0)
    assert fetch(image_server.url("redirect/0/coffee.jpg"), cfg) == photos["coffee"].read_bytes()
    assert fetch_error(image_server.url("redirect/1/coffee.jpg"), cfg).kind == errors.TOO_MANY_REDIRECTS


def test_redirect_loop(edge_server):
    before = edge_server.count("loop")
    assert fetch_error(edge_server.url("loop")).kind == errors.TOO_MANY_REDIRECTS
    assert edge_server.count("loop") - before == FAST.max_redirects + 1


@pytest.mark.parametrize("status", ["301", "302", "303", "307", "308"])
def test_every_redirect_status_is_followed(edge_server, photos, status):
    url = edge_server.url(f"goto?location=/photo%3Fname%3Drocket&status={status}")
    assert fetch(url) == photos["rocket"].read_bytes()


@pytest.mark.parametrize(
    "location", ["file:///etc/passwd", "ftp://127.0.0.1/x.jpg", "data:image/png;base64,AAAA", "gopher://127.0.0.1/"]
)
def test_redirect_to_another_scheme_is_refused(edge_server, location):
    from urllib.parse import quote

    error = fetch_error(edge_server.url(f"goto?location={quote(location, safe='')}"))
    assert error.kind == errors.UNSUPPORTED_SCHEME


def test_redirect_to_bad_location_is_invalid_url(edge_server):
    error = fetch_error(edge_server.url("goto?location=http%3A%2F%2F%5Bnot-an-ip"))
    assert error.kind == errors.INVALID_URL


def test_redirect_without_location_is_an_http_error(image_server):
    assert fetch_error(image_server.url("status/302")).kind == "http_302"


# --- url_check ---------------------------------------------------------------------------


def test_url_check_sees_every_hop(image_server, photos):
    seen: list[yarl.URL] = []

    async def check(url: yarl.URL) -> None:
        await asyncio.sleep(0)
        seen.append(url)

    assert fetch(image_server.url("redirect/2/retina.jpg"), url_check=check) == photos["retina"].read_bytes()
    assert [u.path for u in seen] == ["/redirect/2/retina.jpg", "/redirect/1/retina.jpg", "/redirect/0/retina.jpg"]
    assert all(isinstance(u, yarl.URL) and u.host == "127.0.0.1" for u in seen)


def test_url_check_refusal_stops_before_connecting(image_server):
    seen: list[str] = []

    async def check(url: yarl.URL) -> None:
        seen.append(url.path)
        if url.path == "/redirect/0/hubble_deep_field.jpg":
            raise RowError(errors.BLOCKED_ADDRESS, f"{url.host} is not allowed")

    before = requests_for(image_server, "redirect/0/hubble_deep_field.jpg")
    error = fetch_error(image_server.url("redirect/1/hubble_deep_field.jpg"), url_check=check)
    assert error.kind == errors.BLOCKED_ADDRESS
    assert seen == ["/redirect/1/hubble_deep_field.jpg", "/redirect/0/hubble_deep_field.jpg"]
    assert requests_for(image_server, "redirect/0/hubble_deep_field.jpg") == before  # never asked for


def test_url_check_refusing_the_first_url_sends_nothing(image_server):
    async def refuse(url: yarl.URL) -> None:
        raise RowError(errors.BLOCKED_ADDRESS, "no")

    before = len(image_server.requests)
    assert fetch_error(image_server.url("photo/chelsea.jpg"), url_check=refuse).kind == errors.BLOCKED_ADDRESS
    assert len(image_server.requests) == before


def test_url_check_runs_again_on_retry(image_server):
    seen: list[str] = []

    async def check(url: yarl.URL) -> None:
        seen.append(url.path)

    fetch(image_server.url("flaky/test-fetch-check/chelsea.jpg"), url_check=check)
    assert seen == ["/flaky/test-fetch-check/chelsea.jpg"] * 2


# --- headers -------------------------------------------------------------------------------


def test_open_session_sends_user_agent(edge_server):
    fetch(edge_server.url("photo?name=coffee"), FetchConfig(timeout_s=3.0, user_agent="tis-ray-test/1.2"))
    assert edge_server.headers[-1]["user-agent"] == "tis-ray-test/1.2"
    assert edge_server.headers[-1]["accept"].startswith("image/")


def test_default_user_agent(edge_server):
    fetch(edge_server.url("photo?name=coffee"), FetchConfig(timeout_s=3.0))
    assert edge_server.headers[-1]["user-agent"] == FetchConfig().user_agent


# --- local files -----------------------------------------------------------------------------


def read_file(path, cfg: FetchConfig = FAST) -> bytes:
    return asyncio.run(_fetch(ImageSource("file", str(path)), cfg))


def file_error(path, cfg: FetchConfig = FAST) -> RowError:
    with pytest.raises(RowError) as info:
        read_file(path, cfg)
    return info.value


def test_local_file(photos):
    assert read_file(photos["hubble_deep_field"]) == photos["hubble_deep_field"].read_bytes()


def test_local_file_with_odd_name(tmp_path):
    path = tmp_path / "my photos" / "café ü.jpg"
    path.parent.mkdir()
    path.write_bytes(b"\xff\xd8 not really")
    assert read_file(path) == b"\xff\xd8 not really"


def test_local_file_missing(tmp_path):
    error = file_error(tmp_path / "nope.jpg")
    assert error.kind == errors.FILE_NOT_FOUND
    assert "nope.jpg" in error.detail


def test_local_folder(tmp_path):
    error = file_error(tmp_path)
    assert error.kind == errors.FILE_NOT_FOUND
    assert "folder" in error.detail


def test_local_file_too_large(tmp_path):
    path = tmp_path / "big.jpg"
    path.write_bytes(b"\0" * 1001)
    assert file_error(path, FetchConfig(max_bytes=1000)).kind == errors.TOO_LARGE
    assert read_file(path, FetchConfig(max_bytes=1001)) == b"\0" * 1001
