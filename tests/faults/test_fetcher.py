"""The fetcher alone (no Ray) against fault servers on 127.0.0.1: politeness per host, and
the fetch-level faults the table cannot show (a non-ASCII host name, what a broken reply's
error says)."""

from __future__ import annotations

import asyncio
import socket

import aiohttp
import pytest
import yarl
from aiohttp.abc import AbstractResolver

from tis_ray import errors
from tis_ray.config import FetchConfig
from tis_ray.errors import RowError
from tis_ray.fetch import ImageFetcher
from tis_ray.hosts import host_key
from tis_ray.sources import ImageSource, classify_image_ref

from . import assets
from .cases import serves
from .server import FaultServer, RateLimited, delayed, lying_length

PHOTO = assets.photo().data
CFG = FetchConfig(timeout_s=5.0, retries=2, backoff_s=0.05, retry_after_cap_s=2.0)


def source(server: FaultServer, route: str, run: str = "t") -> ImageSource:
    return ImageSource("http", server.url(run, route))


async def gather_fetches(fetcher: ImageFetcher, *sources: ImageSource) -> list[bytes | RowError]:
    async def one(s: ImageSource) -> bytes | RowError:
        try:
            return await fetcher.fetch(s)
        except RowError as error:
            return error
    return list(await asyncio.gather(*(one(s) for s in sources)))


@pytest.fixture
def servers():
    """Two hosts (127.0.0.1 on two ports): a strict one with a 2 s rate-limit window, a plain one."""
    strict_route = RateLimited(2, serves(assets.photo()))
    strict = FaultServer({"img": strict_route, "slow": delayed(0.5, serves(assets.photo()))})
    plain = FaultServer({"img": serves(assets.photo())})
    yield strict, plain, strict_route
    strict.close()
    plain.close()


def test_a_host_that_answers_429_is_backed_off_and_the_others_go_on(servers):
    strict, plain, strict_route = servers

    async def main():
        fetcher = ImageFetcher(CFG)
        first = asyncio.ensure_future(fetcher.fetch(source(strict, "img/first")))
        strict_host = host_key(yarl.URL(strict.base))
        for _ in range(100):  # until the fetcher has read the 429: at most 1 s, half the window
            if fetcher.backoff.remaining(strict_host) > 0:
                break
            await asyncio.sleep(0.01)
        assert fetcher.backoff.remaining(strict_host) > 0, "the 429 did not back the host off"
        later = await gather_fetches(fetcher, *(source(strict, f"img/later-{i}") for i in range(4)),
                                     *(source(plain, f"img/other-{i}") for i in range(8)))
        results = [await first, *later]
        await fetcher.close()
        return results

    results = asyncio.run(main())
    assert results == [PHOTO] * 13
    # Only the first request met the rate limit: the other four waited out the back-off
    # instead of each earning a 429 of its own.
    assert strict_route.refused == 1
    assert len(strict.arrivals) == 1 + 1 + 4  # the first, its retry, the four that waited
    # The plain host was not held up: all its requests came before the strict host's second.
    second_strict = sorted(t for t, _ in strict.arrivals)[1]
    assert len(plain.arrivals) == 8 and max(t for t, _ in plain.arrivals) < second_strict


def test_requests_queued_for_one_host_do_not_take_the_in_flight_slots_of_others(servers):
    strict, plain, _ = servers
    cfg = FetchConfig(timeout_s=5.0, max_in_flight=2, per_host_limit=1)

    async def main():
        fetcher = ImageFetcher(cfg)
        slow = [asyncio.ensure_future(fetcher.fetch(source(strict, f"slow/{i}"))) for i in range(3)]
        await asyncio.sleep(0.2)  # the three slow ones are queued: one in flight, two waiting for the host
        other = await fetcher.fetch(source(plain, "img/other"))
        results = [other, *await asyncio.gather(*slow)]
        await fetcher.close()
        return results

    assert asyncio.run(main()) == [PHOTO] * 4
    slow_arrivals = sorted(t for t, _ in strict.arrivals)
    (plain_arrival, _), = plain.arrivals
    assert plain_arrival < slow_arrivals[1]  # it did not wait for the first slow reply to finish


class InFlight:
    """A behaviour wrapper that counts, on the server, the requests it is answering at once."""

    def __init__(self, then):
        self.then, self.now, self.most = then, 0, 0

    async def __call__(self, ex) -> bool:
        self.now += 1
        self.most = max(self.most, self.now)
        try:
            return await self.then(ex)
        finally:
            self.now -= 1


def test_the_default_per_host_cap_gives_each_host_its_own_16_requests_at_once():
    cfg = FetchConfig()
    assert cfg.per_host_limit == 16 and cfg.max_in_flight > 2 * 16  # the documented defaults
    gauges = [InFlight(delayed(0.3, serves(assets.photo()))) for _ in range(2)]
    hosts = [FaultServer({"img": gauge}) for gauge in gauges]
    try:
        async def main():
            fetcher = ImageFetcher(cfg)
            results = await gather_fetches(fetcher, *(source(h, f"img/{i}") for i in range(40) for h in hosts))
            await fetcher.close()
            return results

        results = asyncio.run(main())
    finally:
        for host in hosts:
            host.close()
    assert results == [PHOTO] * 80
    assert [g.most for g in gauges] == [16, 16]  # each host its own 16 at once, and never more


class LoopbackResolver(AbstractResolver):
    """Resolves the names it is given to 127.0.0.1 and nothing else: no DNS query leaves the machine."""

    def __init__(self, names: set[str]):
        self.names = names
        self.asked: list[str] = []

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET):
        self.asked.append(host)
        if host not in self.names:
            raise OSError(f"{host} is not a test name")
        return [{"hostname": host, "host": "127.0.0.1", "port": port, "family": socket.AF_INET, "proto": 0,
                 "flags": socket.AI_NUMERICHOST}]

    async def close(self) -> None:
        pass


def test_a_non_ascii_host_name_is_sent_as_idna(servers):
    _, plain, _ = servers
    resolver = LoopbackResolver({"xn--bcher-kva.test"})
    ref = f"http://bücher.test:{plain.port}/t/img/idn"
    image = classify_image_ref(ref, "/")

    async def main():
        fetcher = ImageFetcher(CFG, connector=aiohttp.TCPConnector(resolver=resolver, use_dns_cache=False))
        data = await fetcher.fetch(image)
        await fetcher.close()
        return data

    assert asyncio.run(main()) == PHOTO
    assert resolver.asked == ["xn--bcher-kva.test"]
    assert plain.hits["t/img/idn"] == 1


def test_a_reply_that_breaks_http_is_a_short_connection_error():
    # Bytes after the declared Content-Length make aiohttp's parser fail with a
    # ClientResponseError that quotes every byte; it used to escape as an internal error.
    server = FaultServer({"lying": lying_length(PHOTO, len(PHOTO) // 2)})
    try:
        async def main():
            fetcher = ImageFetcher(FetchConfig(timeout_s=5.0, retries=1, backoff_s=0.01))
            result = await gather_fetches(fetcher, source(server, "lying"))
            await fetcher.close()
            return result[0]

        error = asyncio.run(main())
    finally:
        server.close()
    assert isinstance(error, RowError) and error.kind == errors.CONNECTION_ERROR, error
    assert "ClientResponseError" in error.detail and len(error.detail) < 400
    assert server.hits["t/lying"] == 2  # retried, like any broken connection


def test_a_wait_for_a_busy_host_does_not_count_against_the_timeout(servers):
    """README: waiting for a slot to a busy host is not part of an image's `--timeout`.

    One slot per host and three half-second replies: the third waits about a second for
    the slot, then half a second for its reply, well past a 0.8 s timeout, and still succeeds.
    """
    strict, _, _ = servers
    cfg = FetchConfig(timeout_s=0.8, retries=0, per_host_limit=1)

    async def main():
        fetcher = ImageFetcher(cfg)
        started = asyncio.get_running_loop().time()
        results = await gather_fetches(fetcher, *(source(strict, f"slow/{i}") for i in range(3)))
        took = asyncio.get_running_loop().time() - started
        await fetcher.close()
        return results, took

    results, took = asyncio.run(main())
    assert results == [PHOTO] * 3
    assert took > 1.4 > cfg.timeout_s  # the last one was waited for much longer than its timeout
    assert len(strict.arrivals) == 3  # one request each: nothing timed out and was tried again


def test_a_back_off_that_began_before_an_images_first_attempt_does_not_count_against_its_timeout(servers):
    """README: a back-off another image's 429 started, waited before this image's first
    attempt, is not part of this image's `--timeout`; the 429'd image's own wait is.

    The strict host answers 429 with ``Retry-After: 2``: the first image, with no retries
    left, fails at once; the next image to that host waits the 2 s out and then succeeds,
    though its timeout is 1 s.
    """
    strict, _, strict_route = servers
    cfg = FetchConfig(timeout_s=1.0, retries=0, retry_after_cap_s=5.0)

    async def main():
        fetcher = ImageFetcher(cfg)
        first = await gather_fetches(fetcher, source(strict, "img/first"))
        loop = asyncio.get_running_loop()
        started = loop.time()
        second = await gather_fetches(fetcher, source(strict, "img/second"))
        took = loop.time() - started
        await fetcher.close()
        return first[0], second[0], took

    first, second, took = asyncio.run(main())
    assert isinstance(first, RowError) and first.kind == "http_429", first
    assert second == PHOTO
    assert took > 1.5 > cfg.timeout_s  # it waited out most of the 2 s window, past its own timeout
    assert strict_route.refused == 1  # the second image was not sent inside the window
