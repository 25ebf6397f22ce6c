"""`tis-ray filter` against a plain-Python reference: sort the rows, take what the rule says."""

from __future__ import annotations

import csv
import math
import os
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from jobs import run_cli
from scored_files import scored_table, write_scored

from tis_ray.histogram import Histogram, to_bins


def _rows(path) -> list[dict]:
    """Every row of a CSV or Parquet file as text cells, the way a user would compare them."""
    if str(path).endswith(".csv"):
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    return [{k: "" if v is None else str(v) for k, v in row.items()} for row in pq.read_table(path).to_pylist()]


def _expected_min(table: pa.Table, column: str, threshold: float, keep_errors: bool) -> list[int]:
    rows = table.to_pylist()
    return [r["row"] for r in rows if (r[column] is not None and r[column] >= threshold)
            or (keep_errors and r[column] is None)]


def _expected_top(table: pa.Table, column: str, percent: float) -> list[int]:
    rows = [r for r in table.to_pylist() if r[column] is not None]
    k = math.ceil(len(rows) * percent / 100)
    best = sorted(rows, key=lambda r: (-r[column], r["row"]))[:k]  # ties: earlier rows first
    return sorted(r["row"] for r in best)


def _kept_ids(path) -> list[int]:
    return [int(r["row"]) for r in _rows(path)]


@pytest.fixture(params=["csv", "parquet"])
def scored(request, tmp_path):
    table = scored_table(3000, seed=3)
    return table, write_scored(tmp_path / f"scored.{request.param}", table, row_group_rows=700)


@pytest.mark.parametrize("threshold", ["0.55", "0.3", "0.8", "0.6123"])
def test_min_similarity_keeps_every_row_at_or_above(scored, tmp_path, threshold):
    table, path = scored
    out = tmp_path / f"kept{path.suffix}"
    result = run_cli("filter", str(path), "-o", str(out), "--min-similarity", threshold)
    assert result.returncode == 0, result.stderr
    expected = _expected_min(table, "similarity", float(threshold), keep_errors=False)
    assert _kept_ids(out) == expected
    assert f"kept {len(expected)} of {table.num_rows} rows" in result.stdout
    assert f"similarity >= {float(threshold):.4f}" in result.stdout


def test_kept_rows_keep_all_their_columns_as_written(scored, tmp_path):
    table, path = scored
    out = tmp_path / f"kept{path.suffix}"
    assert run_cli("filter", str(path), "-o", str(out), "--min-similarity", "0.5", "--keep-errors").returncode == 0
    source = {r["row"]: r for r in _rows(path)}
    kept = _rows(out)
    assert kept and all(source[r["row"]] == r for r in kept)
    assert [int(r["row"]) for r in kept] == _expected_min(table, "similarity", 0.5, keep_errors=True)
    if path.suffix == ".parquet":
        assert pq.read_schema(out) == pq.read_schema(path)


@pytest.mark.parametrize("percent", ["30%", "10", "50%", "0.5%", "100%"])
def test_keep_top_is_exact_on_ties(scored, tmp_path, percent):
    table, path = scored
    out = tmp_path / f"kept{path.suffix}"
    result = run_cli("filter", str(path), "-o", str(out), "--keep-top", percent)
    assert result.returncode == 0, result.stderr
    expected = _expected_top(table, "similarity", float(percent.rstrip("%")))
    assert _kept_ids(out) == expected
    lowest_kept = min(table.column("similarity").to_pylist()[i] for i in expected)
    assert f"similarity >= {lowest_kept:.4f}" in result.stdout


def test_keep_top_with_errors_keeps_the_failed_rows_too(scored, tmp_path):
    table, path = scored
    out = tmp_path / f"kept{path.suffix}"
    assert run_cli("filter", str(path), "-o", str(out), "--keep-top", "30%", "--keep-errors").returncode == 0
    failed = [r["row"] for r in table.to_pylist() if r["similarity"] is None]
    assert failed and _kept_ids(out) == sorted(_expected_top(table, "similarity", 30) + failed)


def test_several_models_filter_by_the_named_one(tmp_path):
    table = scored_table(2000, models=("similarity_b32", "similarity_l14"), seed=5)
    path = write_scored(tmp_path / "multi.parquet", table)
    for model, column in (("b32", "similarity_b32"), ("similarity_l14", "similarity_l14")):
        out = tmp_path / f"kept-{model}.parquet"
        result = run_cli("filter", str(path), "-o", str(out), "--keep-top", "25%", "--model", model)
        assert result.returncode == 0, result.stderr
        assert _kept_ids(out) == _expected_top(table, column, 25)
        assert f"{column} >= " in result.stdout
    ambiguous = run_cli("filter", str(path), "-o", str(tmp_path / "x.parquet"), "--keep-top", "25%")
    assert ambiguous.returncode == 2 and "b32, l14" in ambiguous.stderr and "--model" in ambiguous.stderr
    assert "Traceback" not in ambiguous.stderr


def test_a_failure_part_way_leaves_no_output_and_no_partial_file(tmp_path):
    """Bad scores in the last row group: the earlier groups were already written, to a hidden
    file that must vanish; the output must not appear."""
    table = scored_table(3000, seed=7)
    bad = table.set_column(table.schema.get_field_index("similarity"), "similarity",
                           pa.array(table.column("similarity").to_pylist()[:-1] + [7.5], pa.float64()))
    path = write_scored(tmp_path / "bad.parquet", bad, row_group_rows=500)
    folder = tmp_path / "out"
    folder.mkdir()
    result = run_cli("filter", str(path), "-o", str(folder / "kept.parquet"), "--min-similarity", "0.2")
    assert result.returncode == 2 and "outside [0, 1]" in result.stderr and "Traceback" not in result.stderr
    assert os.listdir(folder) == []


@pytest.mark.parametrize("args, fragment", [
    (["--min-similarity", "1.5"], "outside [0, 1]"),
    (["--keep-top", "0%"], "above 0%"),
    (["--keep-top", "lots"], "not a number"),
    (["--min-similarity", "0.5", "--model", "l14"], "no scores for model 'l14'"),
])
def test_bad_arguments_are_one_line_and_status_2(scored, tmp_path, args, fragment):
    _, path = scored
    result = run_cli("filter", str(path), "-o", str(tmp_path / f"kept{path.suffix}"), *args)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and fragment in lines[0], result.stderr


def test_not_a_scored_file_is_refused(tmp_path):
    (tmp_path / "plain.csv").write_text("image_url,caption\na.jpg,a cat\n")
    result = run_cli("filter", str(tmp_path / "plain.csv"), "-o", str(tmp_path / "k.csv"), "--keep-top", "5%")
    assert result.returncode == 2 and "no similarity column" in result.stderr


def test_percentiles_are_numpys_inverted_cdf():
    rng = np.random.default_rng(11)
    scores = np.round(rng.beta(8, 6, 20_011), 4)
    histogram = Histogram()
    histogram.add(to_bins(scores))
    for p in (1, 5, 10, 25, 50, 75, 90, 95, 99, 33.3):
        assert histogram.percentile(p) / 10_000 == pytest.approx(np.percentile(scores, p, method="inverted_cdf"))


def test_threshold_text_parses_back_to_the_same_rows(tmp_path):
    """The threshold `filter --keep-top` prints, given back to `--min-similarity`, keeps the same
    rows when no tie is split (so the report's slider and `filter` agree)."""
    table = scored_table(1000, seed=9, tie_values=5000)
    path = write_scored(tmp_path / "scored.csv", table)
    first = run_cli("filter", str(path), "-o", str(tmp_path / "a.csv"), "--keep-top", "30%")
    threshold = re.search(r">= (\d\.\d{4})", first.stdout).group(1)
    run_cli("filter", str(path), "-o", str(tmp_path / "b.csv"), "--min-similarity", threshold)
    assert "ties at" not in first.stdout
    assert _kept_ids(tmp_path / "a.csv") == _kept_ids(tmp_path / "b.csv")
