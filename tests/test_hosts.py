"""Per-host politeness logic without I/O: a fake clock drives `HostBackoff`."""

from __future__ import annotations

import asyncio

import pytest
import yarl

from tis_ray.hosts import HostBackoff, HostSlots, host_key


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.mark.parametrize(("url", "key"), [
    ("http://example.com/a.jpg", "example.com:80"),
    ("https://example.com/a.jpg", "example.com:443"),
    ("http://Example.COM:8080/a.jpg", "example.com:8080"),
    ("http://127.0.0.1:9000/a.jpg", "127.0.0.1:9000"),
    ("http://[::1]:9000/a.jpg", "::1:9000"),
    ("http://bücher.example/a.jpg", "xn--bcher-kva.example:80"),
])
def test_host_key_is_host_and_port(url, key):
    assert host_key(yarl.URL(url)) == key


def test_two_ports_on_one_machine_are_two_hosts():
    assert host_key(yarl.URL("http://127.0.0.1:8001/")) != host_key(yarl.URL("http://127.0.0.1:8002/"))


def test_a_host_is_backed_off_for_the_given_time_and_others_are_not(clock):
    backoff = HostBackoff(clock)
    assert backoff.remaining("a:80") == 0
    backoff.back_off("a:80", 2.0)
    assert backoff.remaining("a:80") == pytest.approx(2.0)
    assert backoff.remaining("b:80") == 0
    clock.now += 1.5
    assert backoff.remaining("a:80") == pytest.approx(0.5)
    clock.now += 0.5
    assert backoff.remaining("a:80") == 0


def test_a_longer_back_off_extends_and_a_shorter_one_does_not_shorten(clock):
    backoff = HostBackoff(clock)
    backoff.back_off("a:80", 2.0)
    backoff.back_off("a:80", 5.0)
    assert backoff.remaining("a:80") == pytest.approx(5.0)
    clock.now += 1.0
    backoff.back_off("a:80", 1.0)
    assert backoff.remaining("a:80") == pytest.approx(4.0)


def test_a_back_off_that_ended_starts_afresh(clock):
    backoff = HostBackoff(clock)
    backoff.back_off("a:80", 1.0)
    clock.now += 10
    backoff.back_off("a:80", 1.0)
    assert backoff.remaining("a:80") == pytest.approx(1.0)


def test_wait_sleeps_until_the_end_even_when_extended_meanwhile(clock):
    backoff = HostBackoff(clock)
    backoff.back_off("a:80", 2.0)
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.now += seconds
        if len(slept) == 1:  # another request's 429 while we wait
            backoff.back_off("a:80", 3.0)

    asyncio.run(backoff.wait("a:80", sleep))
    assert slept == [pytest.approx(2.0), pytest.approx(3.0)]
    assert backoff.remaining("a:80") == 0


@pytest.mark.parametrize("seconds", [0.05, 0.5, 1.0])
def test_wait_sleeps_out_a_short_back_off_whole(clock, seconds):
    """Back-offs under a second (a ``Retry-After: 0.5``, the default 0.25 s retry delay) are
    waited out too, to the end: the host is asked again no sooner than it said."""
    backoff = HostBackoff(clock)
    backoff.back_off("a:80", seconds)
    slept: list[float] = []

    async def sleep(s: float) -> None:
        slept.append(s)
        clock.now += s

    asyncio.run(backoff.wait("a:80", sleep))
    assert sum(slept) == pytest.approx(seconds)


def test_wait_returns_at_once_for_a_host_not_backed_off(clock):
    backoff = HostBackoff(clock)
    backoff.back_off("a:80", 2.0)

    async def sleep(seconds: float) -> None:
        raise AssertionError("must not sleep")

    asyncio.run(backoff.wait("b:80", sleep))


def test_host_slots_cap_each_host_and_forget_idle_ones():
    slots = HostSlots(2)
    active = {"a": 0, "b": 0}
    peak = {"a": 0, "b": 0}

    async def use(host: str) -> None:
        async with slots.hold(host):
            active[host] += 1
            peak[host] = max(peak[host], active[host])
            await asyncio.sleep(0.01)
            active[host] -= 1

    async def main() -> None:
        await asyncio.gather(*(use("a") for _ in range(6)), *(use("b") for _ in range(3)))

    asyncio.run(main())
    assert peak == {"a": 2, "b": 2}
    assert slots._hosts == {}
