"""A small batch job's input and its check, shared by the tests that run the job on a
cluster: every row comes out once, in order, and scores match the reference."""

from __future__ import annotations

import csv
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
from reference import reference_similarities, tolerance

from tis_ray.errors import error_kind


def sample_rows(image_server, photos) -> list[tuple[str, str, str]]:
    """(image cell, caption, expected: a photo's name when it scores, else its error kind)."""
    return [
        (image_server.url("photo/chelsea.jpg"), "a cat", "chelsea"),
        (str(photos["coffee"]), "a cup of coffee", "coffee"),
        (image_server.url("status/404"), "gone", "http_404"),
        (image_server.url("photo/rocket.jpg"), "a rocket", "rocket"),
        (str(photos["astronaut"]), "an astronaut", "astronaut"),
    ]


def write_pairs_csv(path: Path, rows) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "image_url", "caption"])
        writer.writerows((f"{i:03d}", image, caption) for i, (image, caption, _) in enumerate(rows))


def read_scored_csv(path) -> pa.Table:
    return pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(column_types={"id": pa.string()}))


def check_scored(table: pa.Table, rows, model_dir: str, photos) -> None:
    """Every row once, in input order; each good row scored as the reference scores it."""
    assert table.column("id").to_pylist() == [f"{i:03d}" for i in range(len(rows))]
    errors, sims = table.column("error").to_pylist(), table.column("similarity").to_pylist()
    good = [i for i, row in enumerate(rows) if row[2] in photos]
    assert [error_kind(e) for e in errors] == [None if row[2] in photos else row[2] for row in rows]
    want = reference_similarities(model_dir, [photos[rows[i][2]] for i in good], [rows[i][1] for i in good])
    for i, expected in zip(good, want):
        assert abs(sims[i] - expected) <= tolerance(photos[rows[i][2]]), (i, sims[i], expected)
