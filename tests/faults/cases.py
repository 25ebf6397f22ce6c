"""Every fault case, once: what the input or the server does, and the documented outcome.

The same list drives the batch run, the Serve run and the report, so a case is
added in one place. ``expect`` is README's error kind, or None where the input is
valid and must be scored like the reference scores the case's `Asset.visible`.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from urllib.parse import unquote

from . import assets
from .assets import Asset
from .server import (
    Behaviour,
    FaultServer,
    chunked_forever,
    first_then,
    lying_length,
    raw,
    redirect,
    redirect_chain,
    redirect_to,
    reply,
    reset_mid_body,
    silent,
    trickle,
)

CAPTION = "a photo"


def serves(asset: Asset, content_type: str = "image/jpeg") -> Behaviour:
    return reply(200, asset.data, content_type)


@dataclass(frozen=True)
class FaultCase:
    name: str
    group: str  # network, image or caption
    does: str  # what the input or the server does, in words
    expect: str | None  # the documented error kind; None: scored
    behaviour: Behaviour | None = None  # what the fault server answers at /<run>/<route>
    asset: Asset | None = None  # the image a valid case shows (it is what the reference scores)
    image: str | None = None  # an image cell that no route serves; "{refused}" is a closed port's URL
    path: str | None = None  # how the URL spells the route when that is not `name`
    caption: str = CAPTION
    strict_host: bool = False  # served by the second server: a 429 backs off a whole host
    requests: int | None = None  # requests the server must see, per run
    hangs: bool = False  # the server never finishes: the client must leave at its timeout

    @property
    def route(self) -> str:
        return unquote(self.path or self.name)

    def image_cell(self, servers: FaultServers, run: str) -> str:
        if self.image is not None:
            return self.image.format(refused=servers.refused)
        server = servers.strict if self.strict_host else servers.main
        return f"{server.base}/{run}/{self.path or self.name}"

    def server(self, servers: FaultServers) -> FaultServer:
        return servers.strict if self.strict_host else servers.main


@dataclass
class FaultServers:
    main: FaultServer
    strict: FaultServer  # the 429 cases: their back-off must not slow the others
    refused: str  # a loopback URL base where nothing listens


def _ok(asset: Asset, content_type: str = "image/jpeg") -> dict:
    return {"behaviour": serves(asset, content_type), "asset": asset}


def _photo() -> dict:
    return _ok(assets.photo())


def _caption(name: str, does: str, caption: str, expect: str | None) -> FaultCase:
    # A row that cannot be scored for its caption costs no request, in batch as in Serve.
    requests = 0 if expect == "empty_caption" else None
    return FaultCase(name, "caption", does, expect, caption=caption, requests=requests, **_photo())


GZIP_BOMB = gzip.compress(b"\0" * 20_000_000, 9)
OVER_CAP = b"\xff\xd8\xff\xe0" + b"\0" * 1_200_000  # over the suite's 1 MB cap

CASES: tuple[FaultCase, ...] = (
    # --- network ---------------------------------------------------------------------
    FaultCase("http-404", "network", "404 Not Found", "http_404", reply(404), requests=1),
    FaultCase("http-403", "network", "403 Forbidden", "http_403", reply(403), requests=1),
    FaultCase("http-410", "network", "410 Gone", "http_410", reply(410), requests=1),
    FaultCase("http-500-then-ok", "network", "500 once, then the photo", None,
              first_then(reply(500), serves(assets.photo())), assets.photo(), requests=2),
    FaultCase("http-503-always", "network", "503 on every request", "http_503", reply(503), requests=2),
    FaultCase("http-429-then-ok", "network", "429 with Retry-After: 1 once, then the photo", None,
              first_then(reply(429, Retry_After="1"), serves(assets.photo())), assets.photo(),
              strict_host=True, requests=2),
    FaultCase("http-429-always", "network", "429 with Retry-After: 1 on every request", "http_429",
              reply(429, Retry_After="1"), strict_host=True, requests=2),
    FaultCase("connection-refused", "network", "nothing listens on the port", "connection_error",
              image="{refused}/photo.jpg"),
    FaultCase("reset-mid-body", "network", "1 kB of a promised 100 kB, then a TCP reset", "connection_error",
              reset_mid_body(), requests=2),
    FaultCase("never-answers", "network", "reads the request, never answers", "timeout", silent(), hangs=True),
    FaultCase("trickle", "network", "a chunked body of one byte per 50 ms, forever", "timeout", trickle(),
              hangs=True),
    FaultCase("over-byte-cap", "network", "1.2 MB body with an honest Content-Length", "too_large",
              reply(200, OVER_CAP, "image/jpeg")),
    FaultCase("over-byte-cap-chunked", "network", "an endless chunked body, no length", "too_large",
              chunked_forever()),
    FaultCase("length-longer-than-body", "network", "Content-Length 5000 over the body, then close",
              "connection_error", lying_length(assets.photo().data, len(assets.photo().data) + 5000), requests=2),
    FaultCase("length-shorter-than-body", "network", "Content-Length half the body; the rest follows it",
              "connection_error", lying_length(assets.photo().data, len(assets.photo().data) // 2), requests=2),
    FaultCase("gzip-bomb", "network", "gzip Content-Encoding: 10 kB that inflate to 20 MB", "too_large",
              reply(200, GZIP_BOMB, "image/jpeg", Content_Encoding="gzip")),
    FaultCase("huge-header", "network", "a 200 with a 100 kB header line", "connection_error",
              reply(200, assets.photo().data, "image/jpeg", X_Padding="x" * 100_000), requests=2),
    FaultCase("not-http", "network", "answers 'SSH-2.0-OpenSSH_9.6' and closes", "connection_error",
              raw(b"SSH-2.0-OpenSSH_9.6\r\n"), requests=2),
    FaultCase("redirect-chain", "network", "3 redirects, then the photo", None,
              redirect_chain(3, "photo.jpg"), assets.photo()),
    FaultCase("redirect-chain-too-long", "network", "6 redirects (the limit is 5)", "too_many_redirects",
              redirect_chain(6, "photo.jpg")),
    FaultCase("redirect-loop", "network", "redirects to itself", "too_many_redirects", redirect("redirect-loop")),
    FaultCase("redirect-to-ftp", "network", "redirects to an ftp:// URL", "unsupported_scheme",
              redirect_to("ftp://127.0.0.1/photo.jpg"), requests=1),
    FaultCase("invalid-url", "network", "'http://[::1' (unclosed bracket)", "invalid_url", image="http://[::1"),
    FaultCase("url-without-host", "network", "'http://'", "invalid_url", image="http://"),
    FaultCase("url-bracket-before-at", "network", "'http://[::1]@/x.jpg' (crashed the URL parser)", "invalid_url",
              image="http://[::1]@/x.jpg"),
    FaultCase("unsupported-scheme", "network", "an ftp:// URL", "unsupported_scheme",
              image="ftp://127.0.0.1/photo.jpg"),
    FaultCase("missing-image", "network", "an empty image cell", "missing_image", image=""),
    FaultCase("percent-encoded", "network", "path 'pct/caf%C3%A9%20au%20lait.jpg', sent as written", None,
              path="pct/caf%C3%A9%20au%20lait.jpg", **_photo()),
    FaultCase("non-ascii-path", "network", "path 'ünï/café.jpg' (not escaped)", None,
              path="ünï/café.jpg", **_photo()),
    # --- images ----------------------------------------------------------------------
    FaultCase("truncated-jpeg", "image", "the first half of a JPEG", "decode_error", **_ok(assets.truncated_jpeg())),
    FaultCase("html-as-jpeg", "image", "an HTML page sent as image/jpeg", "decode_error", **_ok(assets.HTML)),
    FaultCase("png-as-text-plain", "image", "a valid PNG sent as text/plain", None, **_ok(assets.png(), "text/plain")),
    FaultCase("decompression-bomb", "image", "1-bit PNG, 12000 x 12000, a few kB", "decompression_bomb",
              **_ok(assets.decompression_bomb(), "image/png")),
    FaultCase("cmyk-jpeg", "image", "CMYK JPEG", None, **_ok(assets.cmyk_jpeg())),
    FaultCase("png-16-bit", "image", "16-bit grey PNG", None, **_ok(assets.png_16_bit(), "image/png")),
    FaultCase("palette-png-transparent", "image", "palette PNG, entry 0 transparent", None,
              **_ok(assets.palette_png_with_transparency(), "image/png")),
    FaultCase("exif-rotated-jpeg", "image", "JPEG stored on its side, EXIF orientation 6", None,
              **_ok(assets.exif_rotated_jpeg())),
    FaultCase("animated-gif", "image", "2-frame GIF (first frame is scored)", None,
              **_ok(assets.animated_gif(), "image/gif")),
    FaultCase("webp", "image", "lossy WebP", None, **_ok(assets.webp(), "image/webp")),
    FaultCase("one-pixel", "image", "1 x 1 PNG", None, **_ok(assets.one_pixel(), "image/png")),
    FaultCase("wide-10000x50", "image", "10000 x 50 PNG", None, **_ok(assets.wide_strip(), "image/png")),
    FaultCase("eps-named-jpg", "image", "EPS file at a .jpg path, as image/jpeg", "decode_error",
              path="eps/figure.jpg", **_ok(assets.EPS)),
    FaultCase("empty-body", "image", "200 with an empty body", "decode_error", reply(200, b"", "image/jpeg")),
    # --- captions --------------------------------------------------------------------
    _caption("caption-empty", "empty caption", "", "empty_caption"),
    _caption("caption-whitespace", "caption of spaces, a tab and a newline", " \t \n ", "empty_caption"),
    _caption("caption-5000-chars", "5,000-character caption (truncated to 77 tokens)",
             ("a cat on a sofa " * 313)[:5000], None),
    _caption("caption-emoji", "emoji", "a cat 🐱 on a sofa 🛋️ 😺", None),
    _caption("caption-rtl", "right-to-left text (Hebrew, Arabic)", "חתול על ספה · قطة على أريكة", None),
    _caption("caption-csv-quoting", "quotes, commas, LF and CRLF inside the field",
             'a "quoted" cat, on a sofa,\nin two lines\r\nor three', None),
    _caption("caption-nul", "a NUL byte inside", "a cat\x00 on a sofa", None),
)

ROUTES: dict[str, Behaviour] = {
    "photo.jpg": serves(assets.photo()),
    **{case.route: case.behaviour for case in CASES if case.behaviour is not None},
}
