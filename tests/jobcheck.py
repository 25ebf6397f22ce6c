"""One check every job-running test shares: the stats file accounts for every input row."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from tis_ray.errors import error_kind


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
