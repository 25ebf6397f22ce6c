"""Fetching image bytes: http(s) with aiohttp, a local file, or an object-store
object (`storage`), with hard limits.

Each image gets one deadline covering connection, redirects, retries and the
body; the body is read as a stream and abandoned at the byte cap. Redirects are
followed here, hop by hop, so that a caller-supplied `url_check` sees every URL
before a connection to it is opened (the Serve deployment uses that to refuse
internal addresses).
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import random
import socket
import time
from collections.abc import Awaitable, Callable
from datetime import UTC

import aiohttp
import yarl
from aiohttp.abc import AbstractResolver, ResolveResult

from . import errors, storage
from .config import FetchConfig
from .errors import RowError
from .hosts import HostBackoff, HostSlots, host_key
from .optout import opt_out_directive
from .sources import HTTP_SCHEMES, ImageSource, parse_http_url

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
CHUNK_BYTES = 64 * 1024

UrlCheck = Callable[[yarl.URL], Awaitable[None]]


class AnsweringResolver(AbstractResolver):
    """`inner` (aiohttp's threaded resolver by default), with an empty answer made a DNS failure.

    aiohttp 3.14 asserts that a lookup found at least one address (an AssertionError,
    which would surface as internal_error); its own resolver returns none when every
    answer is an IPv6 address the machine cannot use. A failed lookup is a connection_error.
    """

    def __init__(self, inner: AbstractResolver | None = None):
        self.inner = inner or aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        infos = await self.inner.resolve(host, port, family)
        if not infos:
            raise OSError(f"{host} resolves to no address")
        return infos

    async def close(self) -> None:
        await self.inner.close()


def open_session(cfg: FetchConfig, connector: aiohttp.BaseConnector | None = None) -> aiohttp.ClientSession:
    """One session per actor; its connector pools connections (per-host caps are `HostSlots`')."""
    connector = connector or aiohttp.TCPConnector(limit=cfg.max_in_flight, limit_per_host=0,
                                                  resolver=AnsweringResolver())
    return aiohttp.ClientSession(
        connector=connector,
        headers={"User-Agent": cfg.user_agent, "Accept": "image/*,*/*;q=0.8"},
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=cfg.timeout_s),
        trust_env=False,
    )


class ImageFetcher:
    """What a fetch actor or a Serve replica holds: one session, an in-flight cap, per-host politeness."""

    def __init__(self, cfg: FetchConfig, url_check: UrlCheck | None = None,
                 connector: aiohttp.BaseConnector | None = None):
        self.cfg = cfg
        self.url_check = url_check
        self.session = open_session(cfg, connector)  # needs the running event loop
        self.in_flight = asyncio.Semaphore(cfg.max_in_flight)
        self.host_slots = HostSlots(cfg.per_host_limit)
        self.backoff = HostBackoff()

    async def fetch(self, source: ImageSource) -> bytes:
        """The bytes, or `RowError`. Queueing for the host and its back-off come before the deadline.

        The host's slot is taken before an in-flight one, so requests queued behind one
        busy or backed-off host do not hold the in-flight slots other hosts need.
        """
        host = host_key(yarl.URL(source.location)) if source.kind == "http" else "local files"
        async with self.host_slots.hold(host):
            await self.backoff.wait(host)
            async with self.in_flight:
                return await fetch_bytes(self.session, source, self.cfg, self.url_check, self.backoff)

    async def close(self) -> None:
        await self.session.close()


async def fetch_bytes(
    session: aiohttp.ClientSession, source: ImageSource, cfg: FetchConfig, url_check: UrlCheck | None = None,
    backoff: HostBackoff | None = None,
) -> bytes:
    """The image's bytes, or `RowError`; never longer than ``cfg.timeout_s``.

    A 429 backs its host off in `backoff` (a fresh one when None), and a retry waits
    for its host's back-off, whichever request started it.
    """
    try:
        async with asyncio.timeout(cfg.timeout_s):
            if source.kind == "file":
                return await asyncio.to_thread(read_file_bytes, source.location, cfg.max_bytes)
            if source.kind == "object":
                return await asyncio.to_thread(storage.read_object, source.location, cfg.max_bytes)
            return await _fetch_http(session, yarl.URL(source.location), cfg, url_check, backoff or HostBackoff())
    except TimeoutError:
        raise RowError(errors.TIMEOUT, f"no complete image within {cfg.timeout_s:g}s") from None


def read_file_bytes(path: str, max_bytes: int) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except FileNotFoundError:
        raise RowError(errors.FILE_NOT_FOUND, f"{path}") from None
    except IsADirectoryError:
        raise RowError(errors.FILE_NOT_FOUND, f"{path} is a folder") from None
    except OSError as exc:
        raise RowError(errors.FILE_NOT_FOUND, f"{path}: {exc.strerror or exc}") from None
    if len(data) > max_bytes:
        raise RowError(errors.TOO_LARGE, f"{path} is over {max_bytes} bytes")
    return data


async def _fetch_http(
    session: aiohttp.ClientSession, url: yarl.URL, cfg: FetchConfig, url_check: UrlCheck | None,
    backoff: HostBackoff,
) -> bytes:
    attempt = 0
    while True:
        try:
            return await _follow_redirects(session, url, cfg, url_check)
        except _Retryable as retry:
            delay = retry.delay if retry.delay is not None else _backoff(cfg, attempt)
            if retry.throttled_by is not None:
                backoff.back_off(retry.throttled_by, delay)
            if attempt >= cfg.retries:
                raise retry.error from None
            attempt += 1
            await asyncio.sleep(max(delay, backoff.remaining(host_key(url))))


class _Retryable(Exception):
    def __init__(self, error: RowError, delay: float | None = None, throttled_by: str | None = None):
        self.error = error
        self.delay = delay
        self.throttled_by = throttled_by  # the host that answered 429


def _backoff(cfg: FetchConfig, attempt: int) -> float:
    return cfg.backoff_s * (2**attempt) * random.uniform(0.8, 1.2)


async def _follow_redirects(
    session: aiohttp.ClientSession, url: yarl.URL, cfg: FetchConfig, url_check: UrlCheck | None
) -> bytes:
    for _ in range(cfg.max_redirects + 1):
        if url_check is not None:
            await url_check(url)
        try:
            async with session.get(url, allow_redirects=False) as resp:
                if resp.status in REDIRECT_STATUSES and "Location" in resp.headers:
                    url = _redirect_target(url, resp.headers["Location"])
                    continue
                if 200 <= resp.status < 300:
                    directive = cfg.honor_opt_out and opt_out_directive(resp.headers.getall("X-Robots-Tag", ()))
                    if directive:  # decided from the headers: the body is never read
                        raise RowError(errors.OPTED_OUT, f"X-Robots-Tag: {directive}")
                    return await _read_capped(resp, cfg.max_bytes)
                error = RowError(errors.http_kind(resp.status), resp.reason or "HTTP error")
                if resp.status == 429:
                    raise _Retryable(error, _retry_after(resp, cfg), throttled_by=host_key(url))
                if resp.status >= 500:
                    raise _Retryable(error, _retry_after(resp, cfg))
                raise error
        except aiohttp.InvalidURL as exc:
            raise RowError(errors.INVALID_URL, str(exc)) from None
        except aiohttp.ClientError as exc:
            # Broken connections, and replies that break HTTP: aiohttp's parser reports a bad
            # status line, bad headers or bytes beyond the Content-Length as ClientResponseError.
            raise _Retryable(RowError(errors.CONNECTION_ERROR, _describe(exc))) from None
    raise RowError(errors.TOO_MANY_REDIRECTS, f"more than {cfg.max_redirects} redirects")


def _redirect_target(current: yarl.URL, location: str) -> yarl.URL:
    try:
        # Parsed again whole: yarl can join into a URL whose host only fails when first read.
        target = parse_http_url(str(current.join(parse_http_url(location))))
    except (RowError, ValueError) as exc:
        raise RowError(errors.INVALID_URL, f"bad redirect Location {location!r}: {exc}") from None
    if target.scheme not in HTTP_SCHEMES:
        raise RowError(errors.UNSUPPORTED_SCHEME, f"redirect to a {target.scheme or 'relative'!r} URL")
    return target


async def _read_capped(resp: aiohttp.ClientResponse, max_bytes: int) -> bytes:
    if resp.content_length is not None and resp.content_length > max_bytes:
        raise RowError(errors.TOO_LARGE, f"Content-Length {resp.content_length} is over {max_bytes} bytes")
    body = bytearray()
    async for chunk in resp.content.iter_chunked(CHUNK_BYTES):
        body += chunk
        if len(body) > max_bytes:
            raise RowError(errors.TOO_LARGE, f"body is over {max_bytes} bytes")
    return bytes(body)


def _retry_after(resp: aiohttp.ClientResponse, cfg: FetchConfig) -> float | None:
    """Seconds from a ``Retry-After`` header (delta or HTTP date), capped; None if absent."""
    value = resp.headers.get("Retry-After")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:  # asctime and "-0000" dates carry no zone; HTTP dates are GMT
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - time.time()
    if math.isnan(seconds):  # "nan" parses as a float, and sleep(nan) never wakes
        return None
    return min(max(seconds, 0.0), cfg.retry_after_cap_s)


def _describe(exc: Exception, limit: int = 300) -> str:
    """The exception in one short line: aiohttp quotes the bytes it could not parse, all of them."""
    text = " ".join(str(exc).split())
    if len(text) > limit:
        text = text[:limit] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

