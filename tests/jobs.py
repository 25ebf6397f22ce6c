"""Running `tis-ray` as a user does, and the check every job-running test shares: the stats
file accounts for every input row."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

import tis_ray
from tis_ray.checkpoint import PART_NAME
from tis_ray.errors import error_kind


def run_cli(*args, env=None, timeout=600):
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "tis_ray", *args], capture_output=True, text=True, env=full_env, timeout=timeout
    )


def rows_durable(output: str | Path) -> int:
    """How many rows the job writing `output` has made durable in its checkpoint so far."""
    try:
        names = os.listdir(f"{output}.parts")
    except FileNotFoundError:  # not started, or finished
        return 0
    return max((int(m.group(2)) for n in names if (m := PART_NAME.match(n))), default=0)


def read_output(path) -> pa.Table:
    return pacsv.read_csv(
        path,
        parse_options=pacsv.ParseOptions(newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(strings_can_be_null=False, column_types={"caption": pa.string()}),
    )


def assert_stats_add_up(output: str | Path, input_rows: int) -> dict:
    """The job's ``<output>.stats.json`` accounts for `input_rows` and agrees with the rows the output holds.

    Each count is checked against the output file itself, not against the stats' other counts.
    """
    stats = json.loads(Path(f"{output}.stats.json").read_text())
    if str(output).endswith(".csv"):
        table = read_output(output)
    else:
        table = pq.read_table(output, columns=["similarity", "error"])
    errors = [e for e in table.column("error").to_pylist() if e]
    assert table.num_rows == stats["rows"] == input_rows, (table.num_rows, stats)
    scored = table.num_rows - table.column("similarity").null_count
    assert stats["outcomes"] == {"scored": scored, "error": len(errors)}, stats
    rows = zip(table.column("similarity").to_pylist(), table.column("error").to_pylist())
    assert all((similarity is None) == bool(error) for similarity, error in rows)  # a score or an error, never both
    assert stats["errors_by_kind"] == dict(Counter(error_kind(e) for e in errors)), stats
    assert stats["output"] == str(Path(output).resolve()) and stats["model"]
    assert (stats["tool"], stats["version"]) == ("tis-ray", tis_ray.__version__), stats
    return stats
