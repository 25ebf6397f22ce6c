"""The output file appears whole or not at all: rows stream into a hidden file beside it,
which is renamed into place only after the last row."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from tis_ray.output import OutputFile, write_atomically

BATCH = pa.table({"caption": ["a cat", "a dog"], "similarity": [0.61, 0.58]})


class ScoringFailed(Exception):
    pass


def _partials(folder) -> list:
    return [p for p in folder.iterdir() if p.name.endswith(".partial")]


@pytest.mark.parametrize("name", ["scored.csv", "scored.parquet"])
def test_a_job_that_fails_midway_leaves_no_output_and_no_partial_file(tmp_path, name):
    target = tmp_path / name
    seen_while_writing = []

    def look():
        partial, = _partials(tmp_path)
        seen_while_writing.append((target.exists(), partial.stat().st_size))

    def batches():
        for _ in range(3):
            yield BATCH
            look()  # the batch just yielded is written by now, into the hidden file only
        raise ScoringFailed

    with pytest.raises(ScoringFailed):
        for _ in write_atomically(batches(), OutputFile.of(str(target)), BATCH.schema):
            pass
    assert [exists for exists, _ in seen_while_writing] == [False] * 3
    sizes = [size for _, size in seen_while_writing]
    assert sizes[0] < sizes[1] < sizes[2], sizes  # rows stream in as they come, not at the end
    assert not target.exists() and _partials(tmp_path) == []


@pytest.mark.parametrize("name", ["scored.csv", "scored.parquet"])
def test_a_finished_job_leaves_exactly_its_rows_at_the_target(tmp_path, name):
    target = tmp_path / name
    passed = list(write_atomically([BATCH, BATCH], OutputFile.of(str(target)), BATCH.schema))
    assert len(passed) == 2 and _partials(tmp_path) == []
    read = pacsv.read_csv(target) if name.endswith(".csv") else pq.read_table(target)
    assert read.to_pylist() == BATCH.to_pylist() * 2


def test_a_job_with_no_rows_writes_the_header(tmp_path):
    target = tmp_path / "scored.csv"
    list(write_atomically([], OutputFile.of(str(target)), BATCH.schema))
    assert target.read_text().splitlines() == ['"caption","similarity"']
