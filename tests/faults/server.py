"""A raw asyncio HTTP/1.1 server on 127.0.0.1 whose routes misbehave on purpose.

Raw sockets, not http.server, because the faults live below HTTP's rules: a
Content-Length that lies, a reset in the middle of a body, a reply that never
comes. Each route is a `Behaviour`; the server counts requests per path and
records how long a client stayed on a connection that never got a whole reply
(the hang the client's timeout must end).

Paths are ``/<run>/<route>``: the same route is served under a separate counter
for each run (``batch``, ``serve``), and a redirect stays inside its run.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import unquote

from loopback import Listener, listening_socket


@dataclass
class Exchange:
    """One request as a behaviour sees it."""

    server: FaultServer
    run: str
    route: str
    hit: int  # 1 for the first request to this run's route
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    def head(self, status: int, headers: dict[str, str], body: bytes = b"") -> None:
        """The status line and headers, and `body` in the same write (one segment on loopback)."""
        lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)

    async def reply(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> bool:
        self.head(status, {"Content-Type": content_type, "Content-Length": str(len(body)), **(headers or {})}, body)
        await self.writer.drain()
        return True

    async def wait_for_client_to_leave(self, started: float) -> None:
        """Until the client closes the connection; records how long it stayed."""
        try:
            while await self.reader.read(65536):
                pass
        except ConnectionError:
            pass
        self.server.hang_s[f"{self.run}/{self.route}"].append(time.monotonic() - started)


# A behaviour answers one exchange and says whether the connection may be reused.
Behaviour = Callable[[Exchange], Awaitable[bool]]

REASONS = {200: "OK", 302: "Found", 403: "Forbidden", 404: "Not Found", 410: "Gone", 429: "Too Many Requests",
           500: "Internal Server Error", 503: "Service Unavailable"}


def reply(status: int, body: bytes = b"", content_type: str = "text/plain", **headers: str) -> Behaviour:
    async def behaviour(ex: Exchange) -> bool:
        return await ex.reply(status, body, content_type, {k.replace("_", "-"): v for k, v in headers.items()})
    return behaviour


def first_then(first: Behaviour, then: Behaviour, times: int = 1) -> Behaviour:
    """`first` for the first `times` requests of a run, `then` after."""
    async def behaviour(ex: Exchange) -> bool:
        return await (first if ex.hit <= times else then)(ex)
    return behaviour


def delayed(seconds: float, then: Behaviour) -> Behaviour:
    """`then`, after `seconds` of silence: a slow host."""
    async def behaviour(ex: Exchange) -> bool:
        await asyncio.sleep(seconds)
        return await then(ex)
    return behaviour


class RateLimited:
    """A strict host: a 429 (``Retry-After: window``) to the first request and to every
    request inside the window that follows it; `then` after. Counts its refusals."""

    def __init__(self, window_s: int, then: Behaviour):
        self.window_s, self.then = window_s, then
        self.refused = 0
        self._penalty_until: float | None = None

    async def __call__(self, ex: Exchange) -> bool:
        now = time.monotonic()
        if self._penalty_until is None:
            self._penalty_until = now + self.window_s
        if now < self._penalty_until:
            self.refused += 1
            return await ex.reply(429, b"slow down", "text/plain", {"Retry-After": str(self.window_s)})
        return await self.then(ex)


def redirect(to_route: str) -> Behaviour:
    """A 302 to another route of the same run."""
    async def behaviour(ex: Exchange) -> bool:
        return await ex.reply(302, b"", "text/plain", {"Location": f"/{ex.run}/{to_route}"})
    return behaviour


def redirect_chain(hops: int, to_route: str) -> Behaviour:
    """`hops` redirects (``<route>/<hops left>``), then to `to_route`."""
    async def behaviour(ex: Exchange) -> bool:
        _, _, left = ex.route.partition("/")
        remaining = int(left) if left else hops
        base = ex.route.split("/", 1)[0]
        target = to_route if remaining <= 1 else f"{base}/{remaining - 1}"
        return await ex.reply(302, b"", "text/plain", {"Location": f"/{ex.run}/{target}"})
    return behaviour


def redirect_to(location: str) -> Behaviour:
    """A 302 to exactly `location` (another scheme, say)."""
    async def behaviour(ex: Exchange) -> bool:
        return await ex.reply(302, b"", "text/plain", {"Location": location})
    return behaviour


def silent() -> Behaviour:
    """Read the request, never answer."""
    async def behaviour(ex: Exchange) -> bool:
        await ex.wait_for_client_to_leave(time.monotonic())
        return False
    return behaviour


def trickle(interval_s: float = 0.05) -> Behaviour:
    """A chunked body of one byte per `interval_s`, for as long as the client listens."""
    async def behaviour(ex: Exchange) -> bool:
        leaving = asyncio.ensure_future(ex.wait_for_client_to_leave(time.monotonic()))
        ex.head(200, {"Content-Type": "image/jpeg", "Transfer-Encoding": "chunked"})
        try:
            while not leaving.done():
                ex.writer.write(b"1\r\n\xff\r\n")
                await ex.writer.drain()
                await asyncio.sleep(interval_s)
        except ConnectionError:
            pass
        await leaving
        return False
    return behaviour


def reset_mid_body(sent: int = 1000, promised: int = 100_000) -> Behaviour:
    """Promise `promised` bytes, send `sent`, then reset the connection (RST, not FIN)."""
    async def behaviour(ex: Exchange) -> bool:
        ex.head(200, {"Content-Type": "image/jpeg", "Content-Length": str(promised)}, b"\xff" * sent)
        await ex.writer.drain()
        sock = ex.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        ex.writer.transport.abort()
        return False
    return behaviour


def lying_length(body: bytes, declared: int, content_type: str = "image/jpeg") -> Behaviour:
    """Send all of `body` under ``Content-Length: declared``.

    Longer than the body: the server then closes, as a crashed upstream would.
    Shorter: the connection stays open with the surplus bytes in it, the worst case
    for a client that reuses connections.
    """
    async def behaviour(ex: Exchange) -> bool:
        await ex.reply(200, body, content_type, {"Content-Length": str(declared)})
        return declared < len(body)
    return behaviour


def chunked_forever(chunk: int = 65536) -> Behaviour:
    """An endless chunked body without any length: only a byte cap can stop it."""
    async def behaviour(ex: Exchange) -> bool:
        ex.head(200, {"Content-Type": "image/jpeg", "Transfer-Encoding": "chunked"})
        try:
            while not ex.writer.is_closing():
                ex.writer.write(b"%x\r\n" % chunk + b"\xff" * chunk + b"\r\n")
                await ex.writer.drain()
        except ConnectionError:
            pass
        return False
    return behaviour


def raw(data: bytes) -> Behaviour:
    """Exactly `data` on the wire, then close: replies that are not HTTP at all."""
    async def behaviour(ex: Exchange) -> bool:
        ex.writer.write(data)
        await ex.writer.drain()
        return False
    return behaviour


class FaultServer(Listener):
    """Serves `routes` on 127.0.0.1 from its own thread and event loop."""

    def __init__(self, routes: dict[str, Behaviour]):
        self.routes = routes
        self.hits: Counter[str] = Counter()  # "<run>/<route>" -> requests
        self.arrivals: list[tuple[float, str]] = []  # (time.monotonic(), "<run>/<route>"), in order
        self.hang_s: defaultdict[str, list[float]] = defaultdict(list)
        self.unknown: list[str] = []  # paths with no route: a client that mangled a URL
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the fault server did not start")

    def url(self, run: str, route: str) -> str:
        return f"{self.base}/{run}/{route}"

    def requests(self, run: str, route: str) -> int:
        return self.hits[f"{run}/{route}"]

    def close(self) -> None:
        """Stop listening, end the connections still open, then the loop."""
        asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    async def _shutdown(self) -> None:
        self._server.close()
        connections = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in connections:
            task.cancel()
        await asyncio.gather(*connections, return_exceptions=True)

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        sock = listening_socket()
        self.port = sock.getsockname()[1]
        self._server = self.loop.run_until_complete(asyncio.start_server(self._connection, sock=sock))
        self._ready.set()
        self.loop.run_forever()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await self._exchange(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        head = await reader.readuntil(b"\r\n\r\n")
        target = head.split(b"\r\n", 1)[0].split(b" ")[1].decode("ascii")
        path = unquote(target.split("?", 1)[0]).lstrip("/")
        run, _, route = path.partition("/")
        key = f"{run}/{route}"
        self.hits[key] += 1
        self.arrivals.append((time.monotonic(), key))
        behaviour = self.routes.get(route) or self.routes.get(route.split("/", 1)[0])
        if behaviour is None:
            self.unknown.append(target)
            behaviour = reply(404, b"no such route")
        return await behaviour(Exchange(self, run, route, self.hits[key], reader, writer))
