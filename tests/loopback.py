"""The suite's loopback servers: every connection a test makes goes to one of these, on 127.0.0.1.

`ImageServer` is a real HTTP/1.1 server (http.server): photos, status codes, redirects,
retries, slow and oversized bodies. `RawServer` hands each connection to a function, for
replies no HTTP server library would send (odd reason phrases, banners, a body held back on
purpose); the fault suite's asyncio `faults.server.FaultServer` is raw for the same reason.
All three listen through `listening_socket` and share `Listener`'s base URL and `with` block.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

HOST = "127.0.0.1"
PHOTOS = Path(__file__).resolve().parent.parent / "examples" / "images"


def listening_socket() -> socket.socket:
    """A TCP socket listening on 127.0.0.1, on a port the kernel picked (so servers never collide)."""
    return socket.create_server((HOST, 0))


def free_port() -> int:
    """A port on 127.0.0.1 where nothing listens: picked by the kernel, then released, for a
    server a test is about to start there (or for a URL that must be refused)."""
    with listening_socket() as sock:
        return sock.getsockname()[1]


class Listener:
    """What every loopback test server offers: its port, its base URL, and a `with` block
    that closes it, so that a failing test does not leave it listening."""

    port: int

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.port}"

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class ImageServer(Listener):
    """A real threaded HTTP/1.1 server on 127.0.0.1 serving `ImageRoutes`.

    It keeps what the tests assert on: every request's path (query included) and headers in
    arrival order, per-key hits for the routes that answer differently the n-th time, and the
    TCP connections it accepted ("refused without a connection" means that count stays 0).
    """

    def __init__(self):
        self.requests: list[str] = []
        self.headers: list[dict[str, str]] = []  # lower-cased names, one dict per request
        self.hits: Counter[str] = Counter()
        self.connections = 0
        self.blobs: dict[str, tuple[bytes, str]] = {}  # /bytes/<key>: (body, content type)
        self.pace_s = 0.0  # /paced/ waits this long; tests change it while the server runs
        self._lock = threading.Lock()
        self.httpd = _CountingHTTPServer(self)
        self.port = self.httpd.server_address[1]
        # Polls for `close` every 50 ms (0.5 s by default): the per-test servers close quickly.
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def url(self, path: str) -> str:
        return f"{self.base}/{path.lstrip('/')}"

    def count(self, path: str) -> int:
        """How many requests had exactly this path (query included)."""
        return self.requests.count("/" + path.lstrip("/"))

    def hit(self, key: str) -> int:
        """Counts one more request for `key`; 1 for the first."""
        with self._lock:
            self.hits[key] += 1
            return self.hits[key]

    def serve_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        self.blobs[key] = (data, content_type)
        return self.url(f"bytes/{key}")

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _CountingHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, images: ImageServer):
        self.images = images
        super().__init__((HOST, 0), ImageRoutes)

    def verify_request(self, request, client_address) -> bool:
        # Called once per accepted connection, from the one thread that accepts them.
        self.images.connections += 1
        return True


class ImageRoutes(BaseHTTPRequestHandler):
    """``GET /<route>/<arg>/...?<name>=<value>&...`` calls ``route_<route>(*args, **query)``.

    Routes:
      /photo/<name>.jpg           a repo photo (404 if there is none)
      /status/<code>              that status, empty body
      /flaky/<key>/<name>.jpg     500 on the first request for <key>, then the photo
      /slow/<seconds>             waits, then a photo
      /paced/<key>/<name>.jpg     waits `pace_s` seconds (settable while running), then the photo
      /big/<bytes>                that many bytes of image/jpeg body (a real JPEG header)
      /html                       an HTML page sent as image/jpeg
      /truncated/<name>.jpg       the first half of a photo
      /bytes/<key>                bytes registered with `serve_bytes`
      /redirect/<n>/<name>.jpg    n redirects, then the photo
      /goto?url=<URL>[&status=]   one redirect (302 unless told) to that URL
      /loop                       a redirect to itself
      /retry_after?key=&value=[&status=429&fails=1]
                                  `status` with ``Retry-After: value`` for the first `fails`
                                  requests of `key`, then a photo
      /chunked?size=[&chunk=8192&delay=0]
                                  `size` bytes as a chunked body, no Content-Length; -1 never ends
      /until_close?size=          a body with no length, ended by closing the connection
      /reset?key=                 promises 100 kB, sends 1 kB, then resets (<key> keeps paths apart)
      /hangup                     closes without any response
    """

    protocol_version = "HTTP/1.1"
    server: _CountingHTTPServer

    def log_message(self, *args):
        pass

    def do_GET(self):
        images = self.server.images
        images.requests.append(self.path)
        images.headers.append({k.lower(): v for k, v in self.headers.items()})
        parts = urlsplit(self.path)
        route, *args = parts.path.strip("/").split("/")
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        try:
            getattr(self, f"route_{route}")(*args, **query)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def send(self, status: int, body: bytes = b"", content_type: str = "image/jpeg", headers=()):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in headers:
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def route_photo(self, name):
        path = PHOTOS / name
        if not path.is_file():
            return self.send(404, b"not found", "text/plain")
        self.send(200, path.read_bytes())

    def route_status(self, code):
        self.send(int(code), b"", "text/plain")

    def route_flaky(self, key, name):
        if self.server.images.hit(f"flaky/{key}") == 1:
            return self.send(500, b"try again", "text/plain")
        self.route_photo(name)

    def route_slow(self, seconds):
        time.sleep(float(seconds))
        self.route_photo("chelsea.jpg")

    def route_paced(self, key, name):
        time.sleep(self.server.images.pace_s)
        self.route_photo(name)

    def route_big(self, size):
        head = (PHOTOS / "chelsea.jpg").read_bytes()[:1024]
        self.send(200, head + b"\0" * (int(size) - len(head)))

    def route_html(self):
        self.send(200, b"<!DOCTYPE html><html><body>not an image</body></html>", "image/jpeg")

    def route_truncated(self, name):
        data = (PHOTOS / name).read_bytes()
        self.send(200, data[: len(data) // 2])

    def route_bytes(self, key):
        data, content_type = self.server.images.blobs[key]
        self.send(200, data, content_type)

    def route_redirect(self, n, name):
        if int(n) == 0:
            return self.route_photo(name)
        self.send(302, b"", "text/plain", [("Location", f"/redirect/{int(n) - 1}/{name}")])

    def route_goto(self, url, status="302"):
        self.send(int(status), b"", "text/plain", [("Location", url)])

    def route_loop(self):
        self.send(302, b"", "text/plain", [("Location", "/loop")])

    def route_retry_after(self, key, value, status="429", fails="1"):
        if self.server.images.hit(f"retry_after/{key}") <= int(fails):
            return self.send(int(status), b"slow down", "text/plain", [("Retry-After", value)])
        self.route_photo("chelsea.jpg")

    def route_chunked(self, size, chunk="8192", delay="0"):
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
        """An HTTP/1.0-style body: no length, the connection's close ends it."""
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(b"\xff" * int(size))
        self.close_connection = True

    def route_reset(self, key):
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", "100000")
        self.end_headers()
        self.wfile.write(b"\xff" * 1000)
        self.wfile.flush()
        self._reset()

    def route_hangup(self):
        self._reset()

    def _reset(self):
        """Close with an RST (SO_LINGER 0), not a FIN: a connection torn down mid-reply."""
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.close_connection = True
        self.wfile = self.rfile = _Sink()


class _Sink:
    """Stands in for the socket files after a reset so the handler's cleanup does not fail."""

    closed = False

    def write(self, data):
        return len(data)

    def flush(self):
        pass

    def close(self):
        pass


class RawServer(Listener):
    """Hands each accepted connection to `answer`, on its own thread, and closes it after:
    for bytes http.server will not write (a reason phrase that leaks, a banner instead of
    HTTP, headers sent and the body held back)."""

    def __init__(self, answer: Callable[[socket.socket], None]):
        self.answer = answer
        self.connections = 0
        self.sock = listening_socket()
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def url(self, path: str) -> str:
        return f"{self.base}/{path.lstrip('/')}"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:  # closed
                return
            self.connections += 1
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            self.answer(conn)

    def close(self) -> None:
        self.sock.close()
