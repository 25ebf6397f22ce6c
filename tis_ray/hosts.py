"""Politeness per host: a cap on concurrent requests, and backing off a host that answers 429.

Both are per fetcher (one per fetch actor or Serve replica) and keyed by `host_key`:
host and port, so two services on one machine are two hosts, as they are two
origins to a browser. Pure asyncio, no I/O: the fetcher decides when to use them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

import yarl


def host_key(url: yarl.URL) -> str:
    """``host:port``, the host as sent (IDNA-encoded) and the scheme's default port when none is named."""
    return f"{url.raw_host or ''}:{url.port}"


class HostSlots:
    """At most `limit` requests at a time to one host, so one slow host cannot take every slot.

    Waiting for a slot happens before an image's deadline starts: a row queued
    behind a slow host is not reported as a timeout. Idle hosts are forgotten.
    """

    def __init__(self, limit: int):
        self.limit = limit
        self._hosts: dict[str, list] = {}  # host -> [semaphore, users]

    @contextlib.asynccontextmanager
    async def hold(self, host: str):
        entry = self._hosts.setdefault(host, [asyncio.Semaphore(self.limit), 0])
        entry[1] += 1
        try:
            async with entry[0]:
                yield
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                del self._hosts[host]


class HostBackoff:
    """Hosts that answered 429, and until when each is left alone.

    A 429 is about the client, not about one URL: after it, every request to that
    host waits until the back-off ends (the server's ``Retry-After``, capped, or the
    retry delay), while requests to other hosts go on. A later, longer back-off
    extends an earlier one; a shorter one never shortens it.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._until: dict[str, float] = {}

    def back_off(self, host: str, seconds: float) -> None:
        now = self._clock()
        self._until = {h: t for h, t in self._until.items() if t > now}  # forget back-offs that ended
        self._until[host] = max(self._until.get(host, now), now + seconds)

    def remaining(self, host: str) -> float:
        """Seconds until `host` may be asked again; 0 when it is not backed off."""
        return max(0.0, self._until.get(host, 0.0) - self._clock())

    async def wait(self, host: str, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        """Until `host`'s back-off has ended, however often it is extended meanwhile."""
        while (left := self.remaining(host)) > 0:
            await sleep(left)
