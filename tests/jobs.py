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

from tis_ray.checkpoint import PART_NAME
from tis_ray.errors import error_kind


def run_cli(*args, env=None, timeout=600):
    full_env = {**os.environ, "RAY_AUTH_MODE": "disabled", **(env or {})}
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
    """The job's ``<output>.stats.json`` adds up to `input_rows` and agrees with the output's own rows."""
    stats = json.loads(Path(f"{output}.stats.json").read_text())
    assert stats["rows"] == input_rows, stats
    assert stats["outcomes"]["scored"] + stats["outcomes"]["error"] == input_rows, stats
    assert sum(stats["errors_by_kind"].values()) == stats["outcomes"]["error"], stats
    assert stats["rows_carried_over"] + stats["rows_scored_now"] == input_rows, stats
    if str(output).endswith(".csv"):
        errors = pacsv.read_csv(output, parse_options=pacsv.ParseOptions(newlines_in_values=True)).column("error")
    else:
        errors = pq.read_table(output, columns=["error"]).column("error")
    kinds = Counter(error_kind(e) for e in errors.to_pylist() if e)
    assert len(errors) == input_rows
    assert dict(kinds) == stats["errors_by_kind"], (kinds, stats)
    assert stats["output"] == str(Path(output).resolve()) and stats["model"]
    return stats
