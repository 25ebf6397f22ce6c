"""`tis-ray report`: one self-contained HTML page that shows a scored output.

The page is `report_template.html` with the report's data put in as JSON: inline CSS
and JS, thumbnails as ``data:`` URIs, so it opens from a laptop's disk or a bucket
and makes no request. Its size does not grow with the rows: it holds counts, not rows.

The file is read in two streaming passes (`scored_output`), in bounded memory:
1. exact score counts per model (`histogram`), errors by kind with the first row of
   each, the hosts of failed images, the lowest and highest pairs, and, per pair of
   models, a 100 x 100 grid of their scores and each one's counts on the rows both scored;
2. the pairs just below and just above the page's starting threshold (known only
   after pass 1), and the sums that make the models' rank correlation exact
   (Spearman's rho with mid-ranks for ties, from pass 1's counts).
Thumbnails are then fetched with scoring's own fetcher and limits (`fetch`), made
at most 128 px and embedded as JPEG.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import html
import io
import itertools
import json
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from fractions import Fraction
from importlib import resources
from urllib.parse import urlsplit

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import __version__, storage
from .config import FetchConfig
from .errors import InputError, RowError, error_kind
from .histogram import (
    KEEP_TOP_SHOWN,
    PERCENTILES,
    SCALE,
    Histogram,
    bin_at_least,
    score_text,
)
from .output import beside, write_whole
from .scored_output import ERROR_COLUMN, ScoredOutput
from .sources import base_dir_of

THUMBNAIL_PX = 128
THUMBNAILS = 24  # pairs per grid: lowest, highest, and around the threshold
DEFAULT_TOP_PERCENT = 30  # DataComp's CLIP-score filter keeps the top 30%
GRID = 100  # cells per side of the model-against-model grid
MAX_HOSTS = 100_000  # distinct hosts counted exactly; later new hosts are counted as one "other"
TOP_HOSTS = 10
MAX_TEXT = 300  # characters of a caption or an error shown
# Published thresholds, as similarity = (cosine + 1) / 2, for the models they were set on.
REFERENCE_LINES = (
    (("clip-vit-base-patch32", "vit-b-32", "vit-b/32"), 0.28, "LAION-5B: cosine 0.28, ViT-B/32"),
    (("clip-vit-base-patch32", "vit-b-32", "vit-b/32"), 0.30, "LAION-400M: cosine 0.30, ViT-B/32"),
)
ROW_KEY = 1 << 40  # sort keys are (score distance) * ROW_KEY + row: ties go to the earlier row


def default_report_path(scored_path: str) -> str:
    return beside(scored_path, ".report.html")


def write_report(scored_path: str, report_path: str | None = None, *, thumbnails: int = THUMBNAILS,
                 threshold: Fraction | None = None, image_column: str | None = None,
                 caption_column: str | None = None, fetch: FetchConfig | None = None) -> str:
    """Write the report of `scored_path` (default: ``SCORED.report.html``); return its path.

    `thumbnails` pairs per grid (0: no images fetched); `threshold` is where the page's
    slider starts and the borderline strip is taken (default: the top 30% of the first model).
    """
    report_path = report_path or default_report_path(scored_path)
    if not storage.without_query(report_path).lower().endswith((".html", ".htm")):
        raise InputError(f"{report_path}: a report is an .html file")
    scored = ScoredOutput.open(scored_path)
    _check_writable(report_path)
    stats = scored.stats() or {}
    collected = _collect(scored, image_column, caption_column, thumbnails, threshold)
    if thumbnails:  # relative image paths resolve against the input's folder, as when scoring
        collected.fetch_thumbnails(base_dir_of(stats.get("input") or scored_path), fetch or FetchConfig())
    page = render(scored, stats, collected)
    return write_whole(report_path, page)


def render(scored: ScoredOutput, stats: dict, collected: _Collected) -> str:
    data = collected.data(scored, stats)
    template = resources.files("tis_ray").joinpath("report_template.html").read_text(encoding="utf-8")
    payload = json.dumps(data, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")
    return template.replace("__TITLE__", html.escape(os.path.basename(storage.without_query(scored.path)))) \
        .replace("__REPORT_DATA__", payload)


@dataclass
class _Pairs:
    """The `n` pairs with the smallest sort keys seen so far, as report rows."""

    n: int
    keys: list[int] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)

    def offer(self, keys: np.ndarray, where: np.ndarray, batch: pa.RecordBatch, offset: int, scores: np.ndarray,
              image: str | None, caption: str | None) -> None:
        if not self.n or not len(where):
            return
        if len(where) > self.n:
            best = np.argpartition(keys[where], self.n - 1)[: self.n]
            where = where[best]
        if self.keys and keys[where].min() >= max(self.keys) and len(self.keys) == self.n:
            return
        images = _cells(batch, image, where)
        captions = _cells(batch, caption, where)
        for i, index in enumerate(where):
            self.keys.append(int(keys[index]))
            self.rows.append({"row": offset + int(index), "score": score_text(int(scores[index])),
                              "image": images[i], "caption": captions[i]})
        order = sorted(range(len(self.keys)), key=self.keys.__getitem__)[: self.n]
        self.keys = [self.keys[i] for i in order]
        self.rows = [self.rows[i] for i in order]


def _cells(batch: pa.RecordBatch, column: str | None, where: np.ndarray) -> list:
    if column is None:
        return [None] * len(where)
    return [_short(v) for v in batch.column(column).take(pa.array(where)).to_pylist()]


def _short(value):
    """`value` as text cut to `MAX_TEXT` characters; None stays None."""
    if value is None:
        return None
    text = str(value)
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


@dataclass
class _ModelPair:
    """Two models on the rows both scored: a grid of their scores, each one's counts, and
    (pass 2) the sum of the products of their mid-ranks, for Spearman's rho."""

    a: str
    b: str
    grid: np.ndarray = field(default_factory=lambda: np.zeros((GRID, GRID), dtype=np.int64))
    first: Histogram = field(default_factory=Histogram)
    second: Histogram = field(default_factory=Histogram)
    rank_products: float = 0.0

    def count(self, bins_a: np.ndarray, bins_b: np.ndarray) -> None:
        both = (bins_a >= 0) & (bins_b >= 0)
        a, b = bins_a[both], bins_b[both]
        self.first.add(a)
        self.second.add(b)
        np.add.at(self.grid, (np.minimum(a * GRID // SCALE, GRID - 1), np.minimum(b * GRID // SCALE, GRID - 1)), 1)

    def add_ranks(self, bins_a: np.ndarray, bins_b: np.ndarray) -> None:
        both = (bins_a >= 0) & (bins_b >= 0)
        self.rank_products += float(np.dot(_mid_ranks(self.first)[bins_a[both]],
                                           _mid_ranks(self.second)[bins_b[both]]))

    def spearman(self) -> float | None:
        n = self.first.total
        if n < 2:
            return None
        mean = (n + 1) / 2
        ranks_a, ranks_b = _mid_ranks(self.first), _mid_ranks(self.second)
        var_a = float(np.dot(self.first.counts, ranks_a**2)) / n - mean**2
        var_b = float(np.dot(self.second.counts, ranks_b**2)) / n - mean**2
        if var_a <= 0 or var_b <= 0:
            return None
        return (self.rank_products / n - mean**2) / math.sqrt(var_a * var_b)


def _mid_ranks(histogram: Histogram) -> np.ndarray:
    """The rank of each bin's rows, ties given the mean of the ranks they span (1-based)."""
    through = np.cumsum(histogram.counts)
    return through - (histogram.counts - 1) / 2


@dataclass
class _Collected:
    models: dict[str, str]  # name -> column
    primary: str
    image: str | None
    caption: str | None
    thumbnails: int
    threshold: Fraction | None
    rows: int = 0
    histograms: dict[str, Histogram] = field(default_factory=dict)
    errors: Counter = field(default_factory=Counter)
    examples: dict[str | None, dict] = field(default_factory=dict)
    hosts: Counter = field(default_factory=Counter)
    hosts_capped: int = 0  # failed rows whose host was not counted (past MAX_HOSTS distinct)
    # The thumbnail grids, sized by the passes that fill them (empty until then).
    lowest: _Pairs = field(default_factory=lambda: _Pairs(0))
    highest: _Pairs = field(default_factory=lambda: _Pairs(0))
    below: _Pairs = field(default_factory=lambda: _Pairs(0))
    above: _Pairs = field(default_factory=lambda: _Pairs(0))
    pairs: list[_ModelPair] = field(default_factory=list)
    start_bin: int = 0
    images: dict[str, str] = field(default_factory=dict)  # image cell -> data URI, or the error

    def first_pass(self, scored: ScoredOutput) -> None:
        self.histograms = {name: Histogram() for name in self.models}
        self.pairs = [_ModelPair(a, b) for a, b in itertools.combinations(self.models, 2)]
        self.lowest, self.highest = _Pairs(self.thumbnails), _Pairs(self.thumbnails)
        for batch, bins in self._batches(scored):
            for name, histogram in self.histograms.items():
                histogram.add(bins[name][bins[name] >= 0])
            for pair in self.pairs:
                pair.count(bins[pair.a], bins[pair.b])
            self._count_errors(batch)
            mine, where = bins[self.primary], np.flatnonzero(bins[self.primary] >= 0)
            rows = np.arange(len(mine), dtype=np.int64) + self.rows
            self.lowest.offer(mine * ROW_KEY + rows, where, batch, self.rows, mine, self.image, self.caption)
            self.highest.offer((SCALE - mine) * ROW_KEY + rows, where, batch, self.rows, mine, self.image,
                               self.caption)
            self.rows += batch.num_rows

    def second_pass(self, scored: ScoredOutput) -> None:
        primary = self.histograms[self.primary]
        self.start_bin = bin_at_least(self.threshold) if self.threshold is not None else \
            primary.top(Fraction(DEFAULT_TOP_PERCENT)).bin
        half = self.thumbnails // 2
        self.below, self.above = _Pairs(half), _Pairs(self.thumbnails - half)
        offset = 0
        for batch, bins in self._batches(scored):
            for pair in self.pairs:
                pair.add_ranks(bins[pair.a], bins[pair.b])
            mine = bins[self.primary]
            rows = np.arange(len(mine), dtype=np.int64) + offset
            below = np.flatnonzero((mine >= 0) & (mine < self.start_bin))
            above = np.flatnonzero(mine >= self.start_bin)
            self.below.offer((self.start_bin - 1 - mine) * ROW_KEY + rows, below, batch, offset, mine, self.image,
                             self.caption)
            self.above.offer((mine - self.start_bin) * ROW_KEY + rows, above, batch, offset, mine, self.image,
                             self.caption)
            offset += batch.num_rows

    def _batches(self, scored: ScoredOutput):
        wanted = [*dict.fromkeys([*self.models.values(), ERROR_COLUMN, *filter(None, (self.image, self.caption))])]
        for batch in scored.batches(wanted):
            yield batch, {name: scored.bins(batch, column) for name, column in self.models.items()}

    def _count_errors(self, batch: pa.RecordBatch) -> None:
        errors = batch.column(ERROR_COLUMN)
        failed = np.flatnonzero(pc.fill_null(pc.not_equal(errors, ""), False).to_numpy(
            zero_copy_only=False))
        if not len(failed):
            return
        texts = errors.take(pa.array(failed)).to_pylist()
        images = _cells(batch, self.image, failed)
        captions = _cells(batch, self.caption, failed)
        for index, text, image, caption in zip(failed, texts, images, captions, strict=True):
            kind = error_kind(text)
            self.errors[kind] += 1
            if kind not in self.examples:
                self.examples[kind] = {"row": self.rows + int(index), "image": image, "caption": caption,
                                       "error": _short(text)}
            host = _host(image)
            if host in self.hosts or len(self.hosts) < MAX_HOSTS:
                self.hosts[host] += 1
            else:
                self.hosts_capped += 1

    def fetch_thumbnails(self, base_dir: str, fetch: FetchConfig) -> None:
        shown = [p for group in (self.lowest, self.highest, self.below, self.above) for p in group.rows]
        refs = list(dict.fromkeys(p["image"] for p in shown if p["image"]))
        self.images = asyncio.run(_thumbnails(refs, base_dir, fetch))

    def data(self, scored: ScoredOutput, stats: dict) -> dict:
        """What the page's script draws, as JSON-ready values."""
        errors_total = sum(self.errors.values())
        model_label = stats.get("model") if len(self.models) == 1 else None
        return {
            "tool": f"tis-ray {__version__}",
            "generated": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "scored_path": scored.path,
            "kept_path": _kept_path(scored.path),
            "header": {
                "input": stats.get("input"), "output": stats.get("output") or scored.path,
                "models": stats.get("model") if model_label else ", ".join(self.models),
                "device": stats.get("device"), "dtype": stats.get("dtype"),
                "rows": self.rows, "scored": self.histograms[self.primary].total if len(self.models) == 1 else None,
                "errors": errors_total, "truncated_captions": stats.get("truncated_captions"),
                "seconds": stats.get("seconds"), "pairs_per_second": stats.get("pairs_per_second"),
                "finished_at": stats.get("finished_at"),
            },
            "models": [self._model_data(name, column, model_label) for name, column in self.models.items()],
            "primary": list(self.models).index(self.primary),
            "start_bin": self.start_bin,
            "start_top": DEFAULT_TOP_PERCENT if self.threshold is None else None,
            "errors": [{"kind": kind, "count": count, "share": count / self.rows, "example": self.examples[kind]}
                       for kind, count in sorted(self.errors.items(), key=lambda kv: (-kv[1], kv[0]))],
            "hosts": self.hosts.most_common(TOP_HOSTS),
            "hosts_not_counted": self.hosts_capped,
            "grids": {name: [self._with_image(p) for p in group.rows] for name, group in (
                ("lowest", self.lowest), ("highest", self.highest), ("below", self.below), ("above", self.above))},
            "thumbnails": self.thumbnails > 0,
            "model_pairs": [{"a": p.a, "b": p.b, "rows": p.first.total, "grid": p.grid.tolist(),
                             "spearman": p.spearman()} for p in self.pairs],
        }

    def _model_data(self, name: str, column: str, label: str | None) -> dict:
        histogram = self.histograms[name]
        nonzero = np.flatnonzero(histogram.counts)
        described = (label or name).lower()
        scored = histogram.total
        return {
            "name": name, "column": column, "label": label or name,
            "option": None if len(self.models) == 1 else name,
            "scored": scored,
            "counts": [[int(b), int(histogram.counts[b])] for b in nonzero],
            "percentiles": [[p, score_text(histogram.percentile(p))] for p in PERCENTILES] if scored else [],
            "keep_top": [[p, histogram.top(Fraction(p)).threshold, histogram.top(Fraction(p)).rows]
                         for p in KEEP_TOP_SHOWN] if scored else [],
            "references": [{"bin": round((cosine + 1) / 2 * SCALE), "label": text}
                           for names, cosine, text in REFERENCE_LINES if any(n in described for n in names)],
        }

    def _with_image(self, pair: dict) -> dict:
        return {**pair, "thumb": self.images.get(pair["image"]) if pair["image"] else None}


def _collect(scored: ScoredOutput, image_column, caption_column, thumbnails, threshold) -> _Collected:
    primary = next(iter(scored.models))
    collected = _Collected(scored.models, primary, scored.image_column(image_column),
                           scored.caption_column(caption_column), thumbnails, threshold)
    collected.first_pass(scored)
    collected.second_pass(scored)
    return collected


def _host(image: str | None) -> str:
    """The host an image came from, as the report groups failures: a URL's host (a bucket for
    s3 and gs), else "local files"."""
    if not image or "://" not in image or image.startswith("file:"):
        return "local files"
    try:
        return urlsplit(image).hostname or "(no host)"
    except ValueError:
        return "(unparseable URL)"


def _kept_path(scored_path: str) -> str:
    base, dot, ext = storage.without_query(scored_path).rpartition(".")
    return f"{base}.kept.{ext}" if dot else f"{scored_path}.kept"


async def _thumbnails(refs: list[str], base_dir: str, fetch: FetchConfig) -> dict[str, str]:
    from .fetch import ImageFetcher

    fetcher = ImageFetcher(fetch)
    try:
        made = await asyncio.gather(*(_thumbnail(fetcher, ref, base_dir, fetch) for ref in refs))
    finally:
        await fetcher.close()
    return dict(zip(refs, made, strict=True))


async def _thumbnail(fetcher, ref: str, base_dir: str, fetch: FetchConfig) -> str:
    """A data URI of the image at most `THUMBNAIL_PX` a side, or the row error's text."""
    from .sources import classify_image_ref

    try:
        data = await fetcher.fetch(classify_image_ref(ref, base_dir))
        return await asyncio.to_thread(_small_jpeg, data, fetch.max_pixels)
    except RowError as error:
        return _short(str(error))
    except Exception as exc:  # noqa: BLE001 - a picture that cannot be shown costs its picture only
        return _short(str(RowError.internal(exc)))


def _small_jpeg(data: bytes, max_pixels: int) -> str:
    from .decode import decode_image

    image = decode_image(data, max_pixels, min_side=THUMBNAIL_PX)
    image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode("ascii")


def _check_writable(report_path: str) -> None:
    if storage.is_object_store(report_path):
        return
    folder = os.path.dirname(os.path.abspath(storage.localize(report_path)))
    if not os.path.isdir(folder):
        raise InputError(f"{report_path}: the folder {folder} does not exist")
