"""The report of a 1,000,000-row output: memory that does not grow with the rows, a page
under the size cap. Heavy (a minute of CPU): CI runs it; `-m 'not heavy'` skips it locally."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from conftest import REPO
from scored_files import write_large_scored

MAX_REPORT_BYTES = 5 * 1024 * 1024
# The report of 1,000,000 rows may use this much more memory than the report of 250,000:
# what it keeps is counts and a few dozen rows. Holding the file would add 46 MB (its
# Arrow table is 62 MB per million rows; measured, docs/benchmarks.md).
MAX_GROWTH_KB = 25 * 1024


def _peak_rss_kb(*args: str) -> int:
    """Peak resident memory of `tis-ray report ARGS` (its own process, measured by a fresh parent)."""
    probe = ("import resource, subprocess, sys; "
             "r = subprocess.run([sys.executable, '-m', 'tis_ray', 'report', *sys.argv[1:]]); "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss if r.returncode == 0 else -1)")
    result = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, check=True)
    return int(result.stdout.split()[-1])


@pytest.mark.heavy
def test_million_row_report_in_bounded_memory(tmp_path):
    shutil.copytree(REPO / "examples" / "images", tmp_path / "images")  # the thumbnails' photos
    peaks = {}
    for rows in (250_000, 1_000_000):
        scored = write_large_scored(tmp_path / f"scored-{rows}.parquet", rows)
        # Without thumbnails: which photos are shown changes with the rows, and so does
        # the memory their decoding takes; the reading of the rows is what must not grow.
        peaks[rows] = _peak_rss_kb(str(scored), "-o", str(tmp_path / f"bare-{rows}.html"), "--no-thumbnails")
        assert peaks[rows] > 0, "the report failed"
    print(f"peak RSS (KB): {peaks}")
    assert peaks[1_000_000] - peaks[250_000] < MAX_GROWTH_KB, peaks
    report = tmp_path / "report.html"  # at the defaults, thumbnails of the real photos included
    assert subprocess.run([sys.executable, "-m", "tis_ray", "report", str(scored), "-o", str(report)]).returncode == 0
    assert report.stat().st_size < MAX_REPORT_BYTES
    assert report.read_text().count("data:image/jpeg;base64,") >= 24
