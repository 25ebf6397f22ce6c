"""Where a row's image comes from: classify the raw value of the image column.

Pure logic, no I/O: a value is the image's own bytes (a binary cell, or the bytes of
Hugging Face's ``{bytes, path}`` struct), an http(s) URL, a ``file://`` URL, an
object store URL (``s3://``, ``gs://``) or a path (relative paths resolve against the
input file's folder, wherever it lives). Anything else is a row error before a single
byte is fetched.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote, urlsplit

import yarl

from . import storage
from .errors import INVALID_URL, MISSING_IMAGE, TOO_LARGE, UNSUPPORTED_SCHEME, RowError

HTTP_SCHEMES = ("http", "https")


@dataclass(frozen=True)
class ImageSource:
    kind: Literal["http", "file", "object"]
    location: str  # the URL for http and object, an absolute path for file


def image_value(cell: object) -> object:
    """A cell as the image it holds: bytes, or the reference (URL or path) to fetch.

    Hugging Face's image struct holds the bytes, or only a path when the bytes were
    left out; the bytes win when both are there (the path is then just a file name)."""
    if isinstance(cell, dict):
        data = cell.get("bytes")
        return data if data is not None else cell.get("path")
    return cell


def checked_image_bytes(data: bytes, max_bytes: int) -> bytes:
    """Image bytes held in the input, under the same byte cap as a fetched image."""
    if not data:
        raise RowError(MISSING_IMAGE, "the image cell holds no bytes")
    return within_byte_cap(data, max_bytes)


def within_byte_cap(data: bytes, max_bytes: int) -> bytes:
    """`data`, or `RowError` (too_large) when it is over the cap every image is held to."""
    if len(data) > max_bytes:
        raise RowError(TOO_LARGE, f"the image is {len(data)} bytes, over the limit of {max_bytes}")
    return data


def classify_image_ref(value: object, base_dir: str) -> ImageSource:
    """Turn an image-column value into an `ImageSource`, or raise `RowError`."""
    if value is None or (isinstance(value, float) and value != value):
        raise RowError(MISSING_IMAGE, "the image column is empty")
    if not isinstance(value, str):
        raise RowError(INVALID_URL, f"expected a URL or path, got {type(value).__name__}")
    ref = value.strip()
    if not ref:
        raise RowError(MISSING_IMAGE, "the image column is empty")
    if "\x00" in ref:
        raise RowError(INVALID_URL, "contains a NUL byte")

    scheme = storage.scheme_of(ref)
    if scheme is None:
        where = storage.join(base_dir, ref)
        return ImageSource("object" if storage.is_object_store(where) else "file", where)
    if scheme in HTTP_SCHEMES:
        return ImageSource("http", _checked_http_url(ref))
    if scheme == "file":
        return ImageSource("file", _file_url_path(ref, base_dir))
    if scheme in storage.OBJECT_STORE_SCHEMES:
        return ImageSource("object", ref)
    raise RowError(UNSUPPORTED_SCHEME, f"'{scheme}' URLs are not supported (use http, https, file, s3, gs or a path)")


def parse_http_url(text: str) -> yarl.URL:
    """`text` (absolute or relative) as a yarl URL, or `RowError` (invalid_url).

    Refuses what yarl would silently rewrite: a bracketed host that is not an IPv6
    literal (an IPvFuture ``[v1.x]`` comes out of yarl as the bare name ``v1.x``).
    yarl refuses what it cannot parse with ValueError, but a few hostile shapes make
    it fail otherwise ('http://[]@' raises IndexError in yarl 1.25); every one of
    them is the URL's fault, so every one is invalid_url, not a crash.
    """
    try:
        url = yarl.URL(text)
        host, port = url.raw_host, url.port
        bracketed = urlsplit(text).netloc.rpartition("@")[2].startswith("[")
    except Exception as exc:  # noqa: BLE001 - see above
        raise RowError(INVALID_URL, f"{text!r}: {exc or type(exc).__name__}") from None
    if bracketed and ":" not in (host or ""):
        raise RowError(INVALID_URL, f"{text!r}: a bracketed host must be an IPv6 address")
    if port == 0:  # yarl itself refuses ports outside 0-65535 (and says so); 0 it lets through
        raise RowError(INVALID_URL, f"{text!r} has an invalid port")
    return url


def _checked_http_url(ref: str) -> str:
    host = parse_http_url(ref).host
    if not host:
        raise RowError(INVALID_URL, f"{ref!r} has no host")
    if any(c.isspace() for c in host):
        raise RowError(INVALID_URL, f"{ref!r} has white space in its host")
    return ref


def _file_url_path(ref: str, base_dir: str) -> str:
    """The path a file URL names; a relative one ('file:a.jpg') resolves like a relative path."""
    try:
        parts = urlsplit(ref)
    except ValueError as exc:  # an unclosed '[' in the host part: 'file://['
        raise RowError(INVALID_URL, f"{ref!r}: {exc}") from None
    if parts.netloc not in ("", "localhost"):
        raise RowError(INVALID_URL, f"file URL {ref!r} names a remote host")
    path = unquote(parts.path)
    if not path:
        raise RowError(INVALID_URL, f"file URL {ref!r} has no path")
    if "\x00" in path:
        raise RowError(INVALID_URL, f"file URL {ref!r} holds an escaped NUL byte")
    return os.path.normpath(os.path.join(base_dir, path))


def base_dir_of(input_path: str | None) -> str:
    """The folder that relative image paths resolve against: the input file's, else the working one."""
    return storage.parent_of(input_path) if input_path else os.getcwd()
