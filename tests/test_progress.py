"""The progress of `tis-ray score`: a line redrawn on a terminal (a real pseudo-terminal
here), plain periodic lines elsewhere; both end with the job's final counts."""

from __future__ import annotations

import csv
import json
import os
import pty
import re
import subprocess
import sys

from conftest import REPO

from tis_ray.tables import TableFile

LINE = re.compile(r"tis-ray: ([\d,]+)/([\d,?]+) rows.*? \| errors ([\d,]+)(?: \((.*)\))?$")


def _env(tiny_model, local_ray) -> dict:
    return {**os.environ, "TIS_MODEL": tiny_model,
            "RAY_ADDRESS": local_ray.get_runtime_context().gcs_address}


def _final_counts(line: str, stats: dict) -> None:
    match = LINE.search(line)
    assert match, line
    done, total, errors, kinds = match.groups()
    assert int(done) == int(total) == stats["rows"]
    assert int(errors) == stats["outcomes"]["error"]
    shown = dict((k, int(n)) for k, n in (part.rsplit(" ", 1) for part in kinds.split(", "))) if kinds else {}
    assert shown == stats["errors_by_kind"]


def test_progress_line_on_a_terminal(tmp_path, tiny_model, local_ray):
    out = tmp_path / "scored.csv"
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "tis_ray", "score", str(REPO / "examples" / "pairs.csv"), "-o", str(out),
         "--dtype", "float32"],
        stdin=follower, stdout=follower, stderr=follower, env=_env(tiny_model, local_ray), close_fds=True)
    os.close(follower)
    screen = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal closed: every process holding it has exited
            break
        if not chunk:
            break
        screen += chunk
    os.close(leader)
    assert process.wait(timeout=60) == 0, screen.decode(errors="replace")[-3000:]
    text = screen.decode()
    redraws = [part for part in re.split(r"[\r\n]+", text) if part.startswith("tis-ray: ") and " rows" in part]
    assert redraws, text
    assert "\rtis-ray: " in text  # redrawn in place, not a new line each time
    stats = json.loads((tmp_path / "scored.csv.stats.json").read_text())
    _final_counts(redraws[-1].rstrip(), stats)


def test_progress_lines_when_not_a_terminal(tmp_path, tiny_model, local_ray):
    out = tmp_path / "scored.csv"
    result = subprocess.run(
        [sys.executable, "-m", "tis_ray", "score", str(REPO / "examples" / "pairs.csv"), "-o", str(out),
         "--dtype", "float32", "--progress-every", "0.2"],
        capture_output=True, text=True, env=_env(tiny_model, local_ray), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "\r" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if LINE.search(line)]
    # the job takes seconds to start its actors, so a line every 0.2 s makes several
    assert len(lines) > 1, result.stderr
    done = [int(LINE.search(line).group(1)) for line in lines]
    assert done == sorted(done)
    _final_counts(lines[-1], json.loads((tmp_path / "scored.csv.stats.json").read_text()))


def test_exact_row_count_of_a_csv_with_newlines_in_captions(tmp_path):
    path = tmp_path / "pairs.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image_url", "caption"])
        writer.writerows([f"{i}.jpg", "two\nlines, and a comma" if i % 3 else ""] for i in range(1234))
    with open(path, newline="") as f:
        assert TableFile.open(str(path)).count_rows() == sum(1 for _ in csv.DictReader(f)) == 1234
