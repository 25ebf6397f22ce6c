"""WebDataset samples from a tar stream: group entries by key, pick the image and the caption.

Pure logic over a file object (no Ray): the shard reader (`shard_source`) runs it in
Ray Data's read tasks. It follows the WebDataset convention img2dataset writes
(``000000.jpg``, ``000000.txt``, ``000000.json``): an entry's key is its path up to the
first dot of its name, the rest is its extension, and a sample's entries are adjacent.

Unlike Ray's own reader, nothing here ends the job: a shard cut short costs the
sample the cut falls in (a ``bad_shard`` row), an entry over the byte cap is never
read into memory, and a key that comes back later is a sample of its own.
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO

from .errors import BAD_SHARD, MISSING_IMAGE, TOO_LARGE, InputError, RowError

IMAGE_ENTRIES = ("jpg", "jpeg", "png", "webp")
CAPTION_ENTRY = "txt"
JSON_ENTRY = "json"
JSON_FIELD_PREFIX = "json."


@dataclass(frozen=True)
class SampleLayout:
    """Which entries of a sample are its image and caption, and which json fields to keep."""

    image_entries: tuple[str, ...] = IMAGE_ENTRIES  # the first one present is the image
    caption_entry: str | None = CAPTION_ENTRY
    caption_json_field: str | None = None  # the caption is this field of the json entry instead
    json_fields: tuple[str, ...] = ()
    max_bytes: int = 20 * 1024 * 1024

    @classmethod
    def of(cls, image_column: str | None, caption_column: str | None, json_fields: tuple[str, ...],
           max_bytes: int) -> SampleLayout:
        """From ``--image-column`` (an extension) and ``--caption-column`` (an extension or ``json.FIELD``)."""
        images = (image_column.lower().lstrip("."),) if image_column else IMAGE_ENTRIES
        caption = (caption_column or CAPTION_ENTRY).lstrip(".")
        if caption.lower().startswith(JSON_FIELD_PREFIX):
            field_name = caption[len(JSON_FIELD_PREFIX):]
            if not field_name:
                raise InputError(f"--caption-column {caption_column}: name a field of the json entry (json.FIELD)")
            return cls(images, None, field_name, tuple(json_fields), max_bytes)
        if caption.lower() in images:
            raise InputError(f"the image and caption entries are the same entry {caption!r}")
        return cls(images, caption.lower(), None, tuple(json_fields), max_bytes)

    @property
    def reads_json(self) -> bool:
        return self.caption_json_field is not None or bool(self.json_fields)

    def wanted(self, extension: str) -> bool:
        return (extension in self.image_entries or extension == self.caption_entry
                or (extension == JSON_ENTRY and self.reads_json))


@dataclass
class Sample:
    """One sample as read: its key, the chosen image's bytes, the caption, kept fields, or an error."""

    key: str | None
    image: bytes | None = None
    caption: str | None = None
    fields: dict[str, str | None] = field(default_factory=dict)
    error: str | None = None


@dataclass
class _Entries:
    """The entries read so far for one key; an entry over the cap is remembered by its size only."""

    key: str
    data: dict[str, bytes] = field(default_factory=dict)
    too_large: dict[str, int] = field(default_factory=dict)

    def has(self, extension: str) -> bool:
        return extension in self.data or extension in self.too_large


def split_name(name: str) -> tuple[str, str] | None:
    """``dir/000001.jpg`` -> (``dir/000001``, ``jpg``): the key up to the name's first dot, the
    extension (lower case) after it; None for an entry without one."""
    folder, _, base = name.rpartition("/")
    stem, dot, extension = base.partition(".")
    if not dot or not stem or not extension:
        return None
    return (f"{folder}/{stem}" if folder else stem), extension.lower()


def read_samples(stream: IO[bytes], layout: SampleLayout) -> Iterator[Sample]:
    """Every sample of a tar stream, in order; read sequentially, one entry in memory at a time."""
    try:
        tar = tarfile.open(fileobj=stream, mode="r|*")  # plain, or compressed as a whole
    except (tarfile.TarError, EOFError) as exc:
        yield Sample(None, error=str(RowError(BAD_SHARD, f"not a readable tar file: {exc}")))
        return
    current: _Entries | None = None
    try:
        for member in tar:
            parts = split_name(member.name) if member.isreg() else None
            if parts is None:
                continue
            key, extension = parts
            if current is None or key != current.key:
                if current is not None:
                    yield _sample(current, layout)
                current = _Entries(key)
            if not layout.wanted(extension) or current.has(extension):
                continue  # another sample's kind of entry, or a second one of a kind: the first counts
            if member.size > layout.max_bytes:
                current.too_large[extension] = member.size  # skipped unread
                continue
            entry = tar.extractfile(member)
            assert entry is not None  # a regular file (isreg above) always has one
            current.data[extension] = entry.read()
    except (tarfile.TarError, EOFError) as exc:
        # The stream ended inside an entry or a header: the sample being read is incomplete.
        detail = f"the shard is cut short in or after this sample ({exc})"
        yield Sample(current.key if current else None, error=str(RowError(BAD_SHARD, detail)))
        return
    if current is not None:
        yield _sample(current, layout)


def _sample(entries: _Entries, layout: SampleLayout) -> Sample:
    sample = Sample(entries.key)
    info = _json(entries, layout, sample)
    sample.fields = {name: _as_text(info.get(name)) for name in layout.json_fields}
    if layout.caption_json_field is not None:
        sample.caption = _as_text(info.get(layout.caption_json_field))
    elif layout.caption_entry in entries.data:
        sample.caption = entries.data[layout.caption_entry].decode("utf-8", errors="replace")
    elif layout.caption_entry in entries.too_large:
        sample.error = sample.error or _too_large(layout.caption_entry, entries)
    image = next((e for e in layout.image_entries if entries.has(e)), None)
    if image is None:
        missing = RowError(MISSING_IMAGE, f"the sample has no {_one_of(layout.image_entries)} entry")
        sample.error = sample.error or str(missing)
    elif image in entries.too_large:
        sample.error = sample.error or _too_large(image, entries)
    else:
        sample.image = entries.data[image]
    return sample


def _json(entries: _Entries, layout: SampleLayout, sample: Sample) -> dict:
    if not layout.reads_json:
        return {}
    if JSON_ENTRY in entries.too_large:
        sample.error = _too_large(JSON_ENTRY, entries)
        return {}
    try:
        info = json.loads(entries.data.get(JSON_ENTRY, b"{}"))
    except ValueError:
        return {}  # a field it was to give is then missing: an empty caption, a null field
    return info if isinstance(info, dict) else {}


def _one_of(names: tuple[str, ...]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def _too_large(extension: str, entries: _Entries) -> str:
    return str(RowError(TOO_LARGE, f"the {extension} entry is {entries.too_large[extension]} bytes, over the limit"))


def _as_text(value: object) -> str | None:
    """A json field as text: a string as it is, anything else as its JSON (``256``, ``true``), missing as null.

    One type for every field keeps every block's schema the same, whatever the samples hold."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)
