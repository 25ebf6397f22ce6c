"""Scored outputs made up for the `filter` and `report` tests: the columns `score` writes
(and `similarity_<name>` per model, the multi-model layout), with ties and errors, in
CSV (written as `score` writes it) or Parquet."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from conftest import PHOTO_NAMES

KINDS = ("http_404", "timeout", "decode_error", "file_not_found")


def scored_table(rows: int, *, models: tuple[str, ...] = ("similarity",), seed: int = 1, tie_values: int = 40,
                 error_share: float = 0.1) -> pa.Table:
    """`rows` rows; scores drawn from `tie_values` distinct 4-decimal values (so many tie);
    about `error_share` of the rows failed (no score in any model, an error)."""
    rng = random.Random(seed)
    values = sorted({round(rng.uniform(0.3, 0.8), 4) for _ in range(tie_values)})
    images, captions, errors = [], [], []
    scores = {m: [] for m in models}
    for i in range(rows):
        host = f"img{i % 7}.example.org"
        images.append(f"images/{PHOTO_NAMES[i % len(PHOTO_NAMES)]}.jpg" if i % 3 else f"http://{host}/{i}.jpg")
        captions.append(f"caption {i}, with a comma")
        if rng.random() < error_share:
            errors.append(f"{rng.choice(KINDS)}: row {i} failed")
            for m in models:
                scores[m].append(None)
        else:
            errors.append(None)
            base = rng.choice(values)
            for k, m in enumerate(models):  # later models: correlated with the first, not equal
                scores[m].append(base if k == 0 else min(1.0, round(base * 0.5 + rng.choice(values) * 0.5, 4)))
    columns = {"row": pa.array(range(rows), pa.int64()), "image_url": images, "caption": captions}
    columns.update({m: pa.array(v, pa.float64()) for m, v in scores.items()})
    columns["error"] = pa.array(errors, pa.string())
    return pa.table(columns)


def write_scored(path: Path, table: pa.Table, row_group_rows: int | None = None) -> Path:
    if path.suffix == ".csv":
        pacsv.write_csv(table, path)
    else:
        pq.write_table(table, path, row_group_size=row_group_rows)
    return path


def write_large_scored(path: Path, rows: int, *, seed: int = 1, chunk: int = 65_536) -> Path:
    """A Parquet output of `rows` rows, written a row group of `chunk` rows at a time as `score`
    writes one: scores like a real CLIP run's (a bump near 0.62), 5% errors, paths to real photos."""
    rng = np.random.default_rng(seed)
    writer = None
    for start in range(0, rows, chunk):
        n = min(chunk, rows - start)
        failed = rng.random(n) < 0.05
        scores = np.round(np.clip(rng.normal(0.62, 0.025, n), 0, 1), 4)
        kinds = rng.choice(KINDS, n)
        table = pa.table({
            "image_url": [f"images/{PHOTO_NAMES[i % len(PHOTO_NAMES)]}.jpg" for i in range(start, start + n)],
            "caption": [f"caption number {i}" for i in range(start, start + n)],
            "similarity": pa.array(np.where(failed, np.nan, scores), pa.float64(), from_pandas=True),
            "error": pa.array([f"{k}: row failed" if f else None for k, f in zip(kinds, failed)], pa.string()),
        })
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table)
    writer.close()
    return path
