"""fetch_bytes against real servers on 127.0.0.1 only: limits, retries, redirects, url_check.

`image_server` (conftest; its routes are in tests/loopback.py) serves photos and each
failure mode: status codes, 429 + Retry-After, redirect chains and loops, odd Locations,
chunked or trickling bodies, mid-body resets; it logs each request's path and headers.
"""

from __future__ import annotations

import asyncio
import email.utils
import os
import time

import pytest
import yarl
from conftest import free_port

from tis_ray import errors
from tis_ray.config import FetchConfig
from tis_ray.errors import RowError
from tis_ray.fetch import fetch_bytes, open_session
from tis_ray.sources import ImageSource

# Small limits so that every failure mode is quick; tests override what they probe.
FAST = FetchConfig(timeout_s=3.0, retries=2, backoff_s=0.01, retry_after_cap_s=1.0, max_redirects=3)


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
    before = image_server.count("status/404")
    error = fetch_error(image_server.url("status/404"))
    assert error.kind == "http_404"
    assert image_server.count("status/404") - before == 1


def test_other_4xx_are_not_retried(image_server):
    before = image_server.count("status/403")
    assert fetch_error(image_server.url("status/403")).kind == "http_403"
    assert image_server.count("status/403") - before == 1


@pytest.mark.parametrize("retries", [0, 1, 3])
def test_500_is_retried_then_reported(image_server, retries):
    cfg = FetchConfig(timeout_s=3.0, retries=retries, backoff_s=0.01)
    before = image_server.count("status/500")
    error = fetch_error(image_server.url("status/500"), cfg)
    assert error.kind == "http_500"
    assert image_server.count("status/500") - before == 1 + retries


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


def test_429_retry_after_is_honoured(image_server, photos):
    path = "retry_after?key=honour&value=0.2"
    start = time.monotonic()
    assert fetch(image_server.url(path)) == photos["chelsea"].read_bytes()
    took = time.monotonic() - start
    assert image_server.count(path) == 2
    assert 0.18 <= took < 1.5  # waited the header's 0.2s, not FAST's 0.01s backoff


def test_429_retry_after_is_capped(image_server, photos):
    cfg = FetchConfig(timeout_s=3.0, retries=1, backoff_s=0.01, retry_after_cap_s=0.3)
    path = "retry_after?key=cap&value=3600"
    start = time.monotonic()
    assert fetch(image_server.url(path), cfg) == photos["chelsea"].read_bytes()
    took = time.monotonic() - start
    assert 0.28 <= took < 1.5


def test_retry_after_is_capped_at_5_seconds_by_default(image_server, photos):
    """README: a ``Retry-After`` is honoured up to 5 s unless told otherwise. A server asking
    for an hour is retried after about 5 s (by the real clock), well inside a 20 s timeout."""
    cfg = FetchConfig(timeout_s=20.0, retries=1, backoff_s=0.01)  # the cap left at its default
    path = "retry_after?key=default-cap&value=3600"
    start = time.monotonic()
    assert fetch(image_server.url(path), cfg) == photos["chelsea"].read_bytes()
    took = time.monotonic() - start
    assert image_server.count(path) == 2
    assert 4.8 <= took < 9.0


def test_retry_after_http_date_is_understood_and_capped(image_server):
    cfg = FetchConfig(timeout_s=3.0, retries=1, backoff_s=0.01, retry_after_cap_s=0.3)
    when = email.utils.formatdate(time.time() + 60, usegmt=True).replace(" ", "%20").replace(",", "%2C")
    path = f"retry_after?key=date&value={when}"
    start = time.monotonic()
    fetch(image_server.url(path), cfg)
    assert time.monotonic() - start >= 0.28


def test_retry_after_date_without_zone_is_gmt(image_server):
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
        fetch(image_server.url(path), cfg)
        took = time.monotonic() - start
    finally:
        if old_tz is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old_tz
        time.tzset()
    assert took >= 0.28


@pytest.mark.parametrize("value", ["-5", "soon", "nan", "NaN"])
def test_odd_retry_after_values_do_not_stall(image_server, photos, value):
    # a negative, unparseable or not-a-number header must neither hang the row nor skip the retry
    cfg = FetchConfig(timeout_s=1.0, retries=1, backoff_s=0.01, retry_after_cap_s=0.5)
    path = f"retry_after?key=odd-{value}&value={value}"
    assert fetch(image_server.url(path), cfg) == photos["chelsea"].read_bytes()
    assert image_server.count(path) == 2


def test_429_after_all_retries_is_reported(image_server):
    cfg = FetchConfig(timeout_s=3.0, retries=2, backoff_s=0.01, retry_after_cap_s=0.05)
    path = "retry_after?key=always&value=0.01&fails=100"
    assert fetch_error(image_server.url(path), cfg).kind == "http_429"
    assert image_server.count(path) == 3


def test_503_retry_after_is_honoured(image_server):
    path = "retry_after?key=503&value=0.2&status=503"
    start = time.monotonic()
    fetch(image_server.url(path))
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


def test_trickling_body_times_out(image_server):
    # 1 kB every 0.1s for a 1 MB body: each read makes progress, but the image's deadline still holds
    cfg = FetchConfig(timeout_s=0.5, retries=0)
    error, took = timed_error(image_server.url("chunked?size=1000000&chunk=1000&delay=0.1"), cfg)
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


def test_too_large_chunked(image_server):
    error = fetch_error(image_server.url("chunked?size=300000"), FetchConfig(timeout_s=3.0, max_bytes=100_000))
    assert error.kind == errors.TOO_LARGE


def test_chunked_within_cap_is_fine(image_server):
    assert fetch(image_server.url("chunked?size=50000&chunk=7000")) == b"\xff" * 50000


def test_endless_chunked_body_stops_at_the_cap(image_server):
    cfg = FetchConfig(timeout_s=3.0, max_bytes=200_000)
    error, took = timed_error(image_server.url("chunked?size=-1&chunk=16384"), cfg)
    assert error.kind == errors.TOO_LARGE  # not a timeout: the stream is abandoned at the cap
    assert took < 2.0


def test_too_large_without_any_length(image_server):
    error = fetch_error(image_server.url("until_close?size=300000"), FetchConfig(timeout_s=3.0, max_bytes=100_000))
    assert error.kind == errors.TOO_LARGE


def test_body_until_close_within_cap(image_server):
    assert fetch(image_server.url("until_close?size=5000")) == b"\xff" * 5000


# --- connection failures ---------------------------------------------------------------


def test_connection_refused():
    cfg = FetchConfig(timeout_s=3.0, retries=1, backoff_s=0.01)
    error = fetch_error(f"http://127.0.0.1:{free_port()}/x.jpg", cfg)
    assert error.kind == errors.CONNECTION_ERROR


def test_reset_mid_body_is_a_connection_error(image_server):
    cfg = FetchConfig(timeout_s=3.0, retries=1, backoff_s=0.01)
    path = "reset?key=mid-body"
    assert fetch_error(image_server.url(path), cfg).kind == errors.CONNECTION_ERROR
    assert image_server.count(path) == 2  # retried once, like any connection error


def test_hangup_without_response_is_a_connection_error(image_server):
    cfg = FetchConfig(timeout_s=3.0, retries=0)
    assert fetch_error(image_server.url("hangup"), cfg).kind == errors.CONNECTION_ERROR


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


def test_redirect_loop(image_server):
    before = image_server.count("loop")
    assert fetch_error(image_server.url("loop")).kind == errors.TOO_MANY_REDIRECTS
    assert image_server.count("loop") - before == FAST.max_redirects + 1


@pytest.mark.parametrize("status", ["301", "302", "303", "307", "308"])
def test_every_redirect_status_is_followed(image_server, photos, status):
    url = image_server.url(f"goto?url=/photo/rocket.jpg&status={status}")
    assert fetch(url) == photos["rocket"].read_bytes()


@pytest.mark.parametrize(
    "location", ["file:///etc/passwd", "ftp://127.0.0.1/x.jpg", "data:image/png;base64,AAAA", "gopher://127.0.0.1/"]
)
def test_redirect_to_another_scheme_is_refused(image_server, location):
    from urllib.parse import quote

    error = fetch_error(image_server.url(f"goto?url={quote(location, safe='')}"))
    assert error.kind == errors.UNSUPPORTED_SCHEME


def test_redirect_to_bad_location_is_invalid_url(image_server):
    error = fetch_error(image_server.url("goto?url=http%3A%2F%2F%5Bnot-an-ip"))
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

    before = image_server.count("redirect/0/hubble_deep_field.jpg")
    error = fetch_error(image_server.url("redirect/1/hubble_deep_field.jpg"), url_check=check)
    assert error.kind == errors.BLOCKED_ADDRESS
    assert seen == ["/redirect/1/hubble_deep_field.jpg", "/redirect/0/hubble_deep_field.jpg"]
    assert image_server.count("redirect/0/hubble_deep_field.jpg") == before  # never asked for


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


def test_open_session_sends_user_agent(image_server):
    fetch(image_server.url("photo/coffee.jpg"), FetchConfig(timeout_s=3.0, user_agent="tis-ray-test/1.2"))
    assert image_server.headers[-1]["user-agent"] == "tis-ray-test/1.2"
    assert image_server.headers[-1]["accept"].startswith("image/")


def test_default_user_agent(image_server):
    fetch(image_server.url("photo/coffee.jpg"), FetchConfig(timeout_s=3.0))
    assert image_server.headers[-1]["user-agent"] == FetchConfig().user_agent


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
