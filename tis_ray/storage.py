"""Where files live: local paths, ``file://`` URLs and object stores (``s3://``,
``gs://``), all through pyarrow filesystems, for inputs, outputs and image cells.

A URL's filesystem comes from `pyarrow.fs.FileSystem.from_uri`, so credentials and
endpoints follow pyarrow's rules: the cloud's usual environment and config files, or
options in the URL's query (``s3://bucket/key?endpoint_override=host:9000&scheme=http``
for an S3-compatible store). One filesystem is built per bucket and options, per
process, and reused.
"""

from __future__ import annotations

import io
import os
import posixpath
from contextlib import contextmanager
from functools import lru_cache
from urllib.parse import unquote, urlsplit, urlunsplit

import pyarrow.fs as pafs

from . import errors
from .errors import RowError

OBJECT_STORE_SCHEMES = frozenset({"s3", "gs", "gcs"})


def scheme_of(ref: str) -> str | None:
    """The URL scheme, or None for a plain path (a Windows drive letter is a path)."""
    head, sep, _ = ref.partition(":")
    if not sep or len(head) < 2 or not head[0].isalpha():
        return None
    if not all(c.isalnum() or c in "+-." for c in head):
        return None
    return head.lower()


def is_object_store(ref: str) -> bool:
    return scheme_of(ref) in OBJECT_STORE_SCHEMES


def without_query(path: str) -> str:
    """An object-store URL without its options (its name decides the file type); paths as they are."""
    return path.split("?", 1)[0] if is_object_store(path) else path


def localize(path: str) -> str:
    """A ``file://`` URL as its local path; other paths and URLs as they are."""
    return resolve(path)[1] if scheme_of(path) == "file" else path


def resolve(path: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem that holds `path`, and the path inside it."""
    scheme = scheme_of(path)
    if scheme in OBJECT_STORE_SCHEMES:
        parts = urlsplit(path)
        bucket = parts.netloc.rpartition("@")[2]  # after any access:secret@
        return _bucket_filesystem(urlunsplit((parts.scheme, parts.netloc, "", parts.query, ""))), \
            bucket + unquote(parts.path)
    if scheme == "file":
        return pafs.LocalFileSystem(), unquote(urlsplit(path).path)
    return pafs.LocalFileSystem(), os.path.abspath(path)


@lru_cache(maxsize=64)
def _bucket_filesystem(bucket_url: str) -> pafs.FileSystem:
    return pafs.FileSystem.from_uri(bucket_url)[0]


def parent_of(path: str) -> str:
    """The folder of a file: a URL's own parent for object stores, else a local folder."""
    if is_object_store(path):
        parts = urlsplit(path)
        return urlunsplit(parts._replace(path=posixpath.dirname(parts.path)))
    return os.path.dirname(resolve(path)[1])


def join(folder: str, relative: str) -> str:
    """`relative` resolved against `folder` (an object-store URL or a local folder).

    An absolute path stays a local path, wherever the input file lives."""
    if is_object_store(folder) and not os.path.isabs(relative):
        parts = urlsplit(folder)
        return urlunsplit(parts._replace(path=posixpath.normpath(posixpath.join(parts.path or "/", relative))))
    return os.path.normpath(os.path.join(folder, relative))


def kind_of(path: str) -> str:
    """``"file"``, ``"folder"`` or ``"missing"``."""
    fs, inner = resolve(path)
    kind = fs.get_file_info(inner).type
    return {pafs.FileType.File: "file", pafs.FileType.Directory: "folder"}.get(kind, "missing")


@contextmanager
def open_text(filesystem: pafs.FileSystem, inner: str):
    """A text reader for a CSV header: UTF-8 with or without BOM, newlines as written."""
    with filesystem.open_input_file(inner) as raw, io.TextIOWrapper(raw, encoding="utf-8-sig", newline="") as text:
        yield text


def check_writable_bucket(filesystem: pafs.FileSystem, inner: str) -> str | None:
    """Why an object-store output cannot be written at `inner`, or None (the bucket exists)."""
    bucket = inner.split("/", 1)[0]
    if filesystem.get_file_info(bucket).type != pafs.FileType.Directory:
        return f"the bucket {bucket} does not exist or cannot be reached"
    if filesystem.get_file_info(inner).type == pafs.FileType.Directory:
        return "is a folder"
    return None


def publish(staged: str, filesystem: pafs.FileSystem, inner: str) -> None:
    """Move a complete local file to `inner` on `filesystem`: a rename locally, one upload to an object store.

    The object appears only when the upload completes, so a reader sees all or nothing.
    """
    if isinstance(filesystem, pafs.LocalFileSystem):
        os.replace(staged, inner)
        return
    pafs.copy_files(staged, inner, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=filesystem)
    os.unlink(staged)


def read_object(url: str, max_bytes: int) -> bytes:
    """An image cell's object-store bytes, or `RowError` (file_not_found, too_large, storage_error)."""
    try:
        fs, inner = resolve(url)
        with fs.open_input_stream(inner) as stream:
            data = stream.read(max_bytes + 1)
    except FileNotFoundError:
        raise RowError(errors.FILE_NOT_FOUND, f"{_without_secrets(url)}: no such object") from None
    except (OSError, ValueError) as exc:
        raise RowError(errors.STORAGE_ERROR, f"{_without_secrets(url)}: {exc}") from None
    if len(data) > max_bytes:
        raise RowError(errors.TOO_LARGE, f"{_without_secrets(url)} is over {max_bytes} bytes")
    return data


def _without_secrets(url: str) -> str:
    """The URL as it may appear in an error cell: no access keys, no query."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


def shown(path: str) -> str:
    """An input path as a message may show it: an object-store URL without its access keys or
    query; a local path as typed (a ``#`` or ``?`` in a file name is part of it)."""
    return _without_secrets(path) if "://" in path else path

