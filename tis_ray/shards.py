"""Which tar shards a WebDataset input names: one file, a folder, a glob or brace notation.

Brace expansion (``shards/{00000..00099}.tar``, ``{a,b}``) is pure string logic, in
the order written; a folder or a glob in a file name is listed once, before any Ray
work starts, in name order. Local paths and object-store URLs alike (see `storage`).
"""

from __future__ import annotations

import fnmatch
import os
import posixpath
import re
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import pyarrow.fs as pafs

from . import storage
from .errors import InputError

SHARD_SUFFIX = ".tar"
_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")
_WILDCARDS = frozenset("*?[")


@dataclass(frozen=True)
class Shard:
    """One tar shard: where it is (a path or URL, as the input names it), its size and modification time."""

    url: str
    size: int
    mtime_ns: int


def is_shard_input(path: str) -> bool:
    """Whether `path` names WebDataset shards: a ``.tar`` name (maybe with braces or a glob) or a folder."""
    if storage.without_query(path).lower().endswith(SHARD_SUFFIX):
        return True
    try:
        return storage.kind_of(path) == "folder"
    except (OSError, ValueError):
        return False  # the table reader says why it cannot reach it


def expand_braces(pattern: str) -> list[str]:
    """Every name a brace pattern stands for, in order: ``{1..3}`` counts (zero-padded as written,
    ``{00..12}``), ``{a,b}`` lists; braces of neither kind stay as they are."""
    for match in _BRACE.finditer(pattern):
        choices = _choices(match.group(1))
        if choices is None:
            continue
        head, tail = pattern[:match.start()], pattern[match.end():]
        return [head + choice + rest for choice in choices for rest in expand_braces(tail)]
    return [pattern]


def _choices(body: str) -> list[str] | None:
    if counted := _RANGE.match(body):
        first, last = counted.groups()
        step = 1 if int(last) >= int(first) else -1
        padded = any(len(n.lstrip("-")) > 1 and n.lstrip("-").startswith("0") for n in (first, last))
        width = max(len(first), len(last)) if padded else 0
        return [str(n).zfill(width) for n in range(int(first), int(last) + step, step)]
    if "," in body:
        return body.split(",")
    return None


def list_shards(spec: str) -> list[Shard]:
    """The shards `spec` names, in order; `InputError` when one is missing or none is found.

    One listing or one metadata request per shard named: on an object store, brace
    notation over 100,000 shards costs as many requests (Ray Data's own reader makes the same)."""
    shards: list[Shard] = []
    for pattern in expand_braces(spec):
        shards += _matching(pattern)
    if not shards:
        raise InputError(f"{spec}: no {SHARD_SUFFIX} shards found")
    if len({storage.resolve(s.url)[0].type_name for s in shards}) > 1:
        raise InputError(f"{spec}: the shards must all be local or all on one object store")
    return shards


def _matching(pattern: str) -> list[Shard]:
    folder, name = _split(pattern)
    if _WILDCARDS & set(urlsplit(folder).path if storage.is_object_store(folder) else folder):
        raise InputError(f"{pattern}: wildcards are allowed in the shard's file name only")
    if _WILDCARDS & set(name):
        return [_shard(storage.join(folder, info.base_name), info) for info in _files_in(folder, pattern)
                if fnmatch.fnmatchcase(info.base_name, name)]
    info = _info(pattern)
    if info.type == pafs.FileType.Directory:
        return [_shard(storage.join(pattern, info.base_name), info) for info in _files_in(pattern, pattern)
                if info.base_name.endswith(SHARD_SUFFIX)]
    if info.type != pafs.FileType.File:
        raise InputError(f"{pattern}: no such shard")
    return [_shard(pattern, info)]


def _shard(url: str, info: pafs.FileInfo) -> Shard:
    return Shard(url, info.size or 0, info.mtime_ns or 0)


def _split(pattern: str) -> tuple[str, str]:
    """A pattern's folder (as a path or URL, options kept) and its file name."""
    if storage.is_object_store(pattern):
        parts = urlsplit(pattern)
        return urlunsplit(parts._replace(path=posixpath.dirname(parts.path))), posixpath.basename(parts.path)
    folder, name = os.path.split(storage.localize(pattern))
    return folder or ".", name


def _files_in(folder: str, spec: str) -> list[pafs.FileInfo]:
    """The files in a folder, by name (hidden ones left out, as Ray Data leaves them)."""
    filesystem, inner = storage.resolve(folder)
    try:
        infos = filesystem.get_file_info(pafs.FileSelector(inner.rstrip("/")))
    except FileNotFoundError:
        raise InputError(f"{spec}: no such folder {folder}") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"{spec}: cannot list {folder}: {exc}") from None
    return sorted((info for info in infos
                   if info.type == pafs.FileType.File and not info.base_name.startswith((".", "_"))),
                  key=lambda info: info.base_name)


def _info(path: str) -> pafs.FileInfo:
    try:
        filesystem, inner = storage.resolve(path)
        return filesystem.get_file_info(inner)
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot reach the shard: {exc}") from None
