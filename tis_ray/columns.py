"""Column names: which input columns hold the image and the caption, what tis-ray's own
result columns are called, and the internal columns that travel between the stages.

Everything here is decided before any Ray work starts, so a bad input is one clear
message, not a failed job. A plain module (no torch, no Ray).
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable
from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa

from .errors import InputError

PIXELS = "__tis_pixels"  # uint8 model-ready pixels, from the fetch stage (see `pixels_column`)
FETCH_ERROR = "__tis_fetch_error"  # the row's error so far (caption or image), from the fetch stage
TRUNCATED = "__tis_truncated"  # the caption was cut to a model's context (any of the job's models)
RUNTIME = "__tis_runtime"  # "device/dtype" of the scorer that scored the row
IMAGE_KEY = "__tis_image_key"  # int64 `pixels_key` of the row's pixels, from the fetch stage: the scorer's dedup

# A WebDataset sample, as the shard reader hands it on (see `shard_source`):
IMAGE_BYTES = "__tis_image"  # the sample's image entry, bytes
CAPTION = "__tis_caption"  # its caption: the txt entry or a json field
READ_ERROR = "__tis_read_error"  # what went wrong reading the sample (a cut shard, a missing entry)

# Found by name, ignoring case, in this order: our own names, img2dataset's (url,
# caption), LAION's, DataComp's and COYO's (URL, TEXT), Hugging Face datasets' (image, text).
IMAGE_COLUMN_CANDIDATES = ("image_url", "url", "image", "image_path")
CAPTION_COLUMN_CANDIDATES = ("caption", "text")
# A column that holds the image itself wins over one that names it: img2dataset's
# Parquet output has both a `url` and the downloaded bytes in `jpg`.
IMAGE_BYTES_CANDIDATES = ("image", "jpg", "jpeg", "png", "webp", "img")


# The kinds of result column a model gives, in the order they are written (each after the
# last for one model, per model for several); SIMILARITY always, the others when asked for.
SIMILARITY, COSINE, PROBABILITY = "similarity", "cosine", "probability"
CAPTION_TRUNCATED, IMAGE_EMBEDDING, TEXT_EMBEDDING = "caption_truncated", "image_embedding", "text_embedding"
RESULT_KINDS = (SIMILARITY, COSINE, PROBABILITY, CAPTION_TRUNCATED, IMAGE_EMBEDDING, TEXT_EMBEDDING)


def pixels_column(spec_index: int) -> str:
    """The internal column of the pixels prepared for a job's `spec_index`-th distinct preprocessing."""
    return PIXELS if spec_index == 0 else f"{PIXELS}_{spec_index}"


@dataclass(frozen=True)
class ResultColumns:
    """The names of the columns tis-ray adds, each after `prefix`: per model ``similarity`` and
    the `kinds` asked for (``cosine``, ``probability``, ...), then one ``error``.

    A job with several `models` names each model's columns ``<kind>_<model>``; one model keeps
    the plain names. A prefix keeps them apart from input columns of the same name (LAION ships
    its own ``similarity``)."""

    prefix: str = ""
    models: tuple[str, ...] = ()  # the job's model names, in order; fewer than two: unsuffixed names
    kinds: tuple[str, ...] = (SIMILARITY,)  # the result kinds written, in `RESULT_KINDS` order

    def of(self, kind: str, model: str | None = None) -> str:
        """The column of `kind` for `model` (the only model where there is one)."""
        suffix = f"_{model}" if len(self.models) > 1 else ""
        return f"{self.prefix}{kind}{suffix}"

    @property
    def similarity(self) -> str:
        return self.of(SIMILARITY, self._only_model)

    @property
    def cosine(self) -> str:
        return self.of(COSINE, self._only_model)

    @property
    def error(self) -> str:
        return f"{self.prefix}error"

    @property
    def written(self) -> list[str]:
        """Every result column the job writes, in order."""
        return [self.of(kind, model) for model in self.models or (None,) for kind in self.kinds] + [self.error]

    @property
    def names(self) -> tuple[str, ...]:
        """The columns an input must not have: those written, and ``cosine`` whether asked for or not."""
        kinds = tuple(kind for kind in RESULT_KINDS if kind in self.kinds or kind == COSINE)
        return tuple(replace(self, kinds=kinds).written)

    @property
    def _only_model(self) -> str | None:
        if len(self.models) > 1:
            raise ValueError(f"several models ({', '.join(self.models)}): name one with `of`")
        return None


def image_bytes_columns(schema: pa.Schema) -> frozenset[str]:
    """The columns that hold images themselves: binary, or Hugging Face's ``{bytes, path}`` struct."""
    return frozenset(field.name for field in schema if is_image_bytes_type(field.type))


def is_image_bytes_type(kind: pa.DataType) -> bool:
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return True
    return pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0


def check_result_names(columns: list[str], results: ResultColumns = ResultColumns()) -> None:
    """Refuse an input whose columns would be confused with the results tis-ray adds."""
    clashes = [c for c in results.names if c in columns]
    if clashes:
        example = ResultColumns("tis_")
        raise InputError(
            f"the input already has result column(s) {', '.join(clashes)}; rename them, or name tis-ray's "
            f"own apart with --prefix (--prefix {example.prefix} writes {example.similarity}, {example.error})"
        )


def pick_columns(
    columns: list[str], image_column: str | None = None, caption_column: str | None = None,
    *, results: ResultColumns = ResultColumns(), bytes_columns: frozenset[str] = frozenset(),
) -> tuple[str, str]:
    """Choose the image and caption columns: the ones asked for, else common names in any case.

    Of `bytes_columns` (those that hold the images themselves), one with an image name
    is chosen before any column of references."""
    check_result_names(columns, results)
    holding = [c for c in columns if c in bytes_columns]
    image = image_column is None and _find(holding, IMAGE_BYTES_CANDIDATES, "--image-column")
    if not image:
        image = _pick(columns, image_column, IMAGE_COLUMN_CANDIDATES, "image", "--image-column")
    caption = _pick(columns, caption_column, CAPTION_COLUMN_CANDIDATES, "caption", "--caption-column")
    if image == caption:
        raise InputError(f"the image and caption columns are the same column {image!r}")
    return image, caption


def _pick(columns: list[str], asked: str | None, candidates: tuple[str, ...], what: str, flag: str) -> str:
    if asked is not None:
        if asked not in columns:
            raise InputError(f"no {what} column {asked!r} in the input (columns: {', '.join(columns)})")
        return asked
    if found := _find(columns, candidates, flag):
        return found
    raise InputError(
        f"cannot find the {what} column: none of {', '.join(candidates)} (in any case) is among "
        f"the input's columns ({', '.join(columns)}); name it with {flag}"
    )


def _find(columns: list[str], candidates: tuple[str, ...], flag: str) -> str | None:
    """The first candidate among `columns`: spelt the same, else in another case (``URL``, ``Text``)."""
    for name in candidates:
        if name in columns:
            return name
        folded = [c for c in columns if c.casefold() == name]
        if len(folded) == 1:
            return folded[0]
        if folded:
            raise InputError(f"the input has several columns named {name!r} in different cases "
                             f"({', '.join(folded)}); choose one with {flag}")
    return None


def embedding_type(dtype: str, size: int) -> pa.DataType:
    """An embedding column's type: `size` floats of `dtype` (float16 or float32) a row. The item is
    named ``element``, as a Parquet file reads back, so a checkpoint's parts and new batches agree."""
    return pa.list_(pa.field("element", pa.from_numpy_dtype(np.dtype(dtype))), size)


def pixel_columns(specs: tuple[Hashable, ...]) -> tuple[tuple[Hashable, ...], tuple[str, ...]]:
    """The distinct preprocessings among the job's models' `specs`, and each model's pixel column:
    models with equal specs share one column, so an image's pixels travel once per distinct spec."""
    distinct = tuple(dict.fromkeys(specs))
    return distinct, tuple(pixels_column(distinct.index(spec)) for spec in specs)


def pixels_key(prepared: tuple[np.ndarray, ...]) -> int:
    """A signed 64-bit BLAKE2b digest of an image's prepared pixels, every preprocessing's: equal
    pixels give equal keys, and the scorer encodes one image per key.

    The fetch stage computes it once per image fetched, beside the decode, across its many
    actors; hashed in the scorer instead, a 1,024-row batch cost ~115 ms on the thread that
    feeds the GPU. All of an image's preprocessings go in, so two images equal in one model's
    crop but not in another's keep apart. 64 bits: two distinct images in a batch of 1,024 share
    a key with odds near 1024**2 / 2**65, about 3e-14.
    """
    digest = hashlib.blake2b(digest_size=8)
    for pixels in prepared:
        digest.update(np.ascontiguousarray(pixels).data)
    return int.from_bytes(digest.digest(), "little", signed=True)
