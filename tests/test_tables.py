"""TableFile beyond its header (tests/test_records.py covers the header and the refusals): what
it records about the file, the exact row count, and CSV files larger than one read block.

Expected values come from the file system (`os.stat`), from the rows written, or from
Python's own `csv` module reading the same file, never from tis_ray.tables itself.
"""

from __future__ import annotations

import csv
import os

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from test_records_fuzz import read_like_the_pipeline

from tis_ray.errors import InputError
from tis_ray.tables import TableFile

# pyarrow reads a CSV in blocks of this many bytes (ReadOptions' default, which Ray's CSV
# datasource keeps), and infers a column's type from the first block alone.
ARROW_CSV_BLOCK = pacsv.ReadOptions().block_size


def write_csv(path, header: list[str], rows: list[list[str]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def python_csv_rows(path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))[1:]


@pytest.fixture(scope="module")
def csv_over_several_blocks(tmp_path_factory):
    """A CSV of a few read blocks whose captions span 21 lines each, so that 20 of every 21 newlines
    are inside quotes and a block boundary falls inside a caption (checked: pyarrow reading it
    without newlines_in_values fails, "parser got out of sync with chunker"), and whose `id` and
    `width` columns look numeric until the last row, as a scraped dataset's often do, so a type
    guessed from the first block fails on that row."""
    rows = [[str(i), f'caption {i}, "quoted"' + "\nanother line" * 20, str(100 + i % 900)] for i in range(12_000)]
    rows.append(["id-last", "the last caption", "unknown"])
    path = tmp_path_factory.mktemp("big") / "pairs.csv"
    write_csv(path, ["id", "caption", "width"], rows)
    assert os.path.getsize(path) > 2 * ARROW_CSV_BLOCK
    return path


def test_open_records_where_the_file_is_its_size_and_change_time(tmp_path):
    path = tmp_path / "pairs.csv"
    write_csv(path, ["image_url", "caption"], [["a.jpg", "a cat"]])
    file = TableFile.open(str(path))
    stat = os.stat(path)
    assert (file.path, file.inner, file.format) == (str(path), str(path), "csv")  # tmp_path is absolute already
    assert (file.size, file.mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    assert file.parquet_rows is None  # a CSV's count is known only by reading it
    with file.filesystem.open_input_file(file.inner) as f:
        assert f.read() == path.read_bytes()


def test_a_parquet_file_is_counted_from_its_footer(tmp_path):
    path = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({"url": [f"{i}.jpg" for i in range(2500)], "caption": ["a cat"] * 2500}), path,
                   row_group_size=1000)
    file = TableFile.open(str(path))
    assert (file.format, file.size, file.mtime_ns) == ("parquet", os.stat(path).st_size, os.stat(path).st_mtime_ns)
    assert file.parquet_rows == file.count_rows() == 2500


def test_a_csv_is_counted_row_by_row_however_many_lines_its_captions_span(tmp_path):
    path = tmp_path / "pairs.csv"
    write_csv(path, ["image_url", "caption"], [[f"{i}.jpg", "two\nlines" if i % 2 else ""] for i in range(7)])
    assert TableFile.open(str(path)).count_rows() == len(python_csv_rows(path)) == 7


def test_a_one_column_csv_is_counted(tmp_path):
    path = tmp_path / "urls.csv"
    write_csv(path, ["url"], [[f"{i}.jpg"] for i in range(5)])
    assert TableFile.open(str(path)).count_rows() == 5


def test_a_csv_over_several_blocks_is_counted_exactly(csv_over_several_blocks):
    # a quoted newline on a block boundary, and an `id` that stops looking like a number
    # after the first block, must neither stop the count nor change it
    assert TableFile.open(str(csv_over_several_blocks)).count_rows() == len(python_csv_rows(csv_over_several_blocks))


def test_a_csv_over_several_blocks_is_read_as_written(csv_over_several_blocks):
    table = read_like_the_pipeline(str(csv_over_several_blocks))
    expected = python_csv_rows(csv_over_several_blocks)
    assert table.num_rows == len(expected)
    assert table.column("caption").to_pylist() == [row[1] for row in expected]
    assert table.column("width").to_pylist()[-1] == "unknown"  # text kept, not a number guessed from block one


def test_an_input_that_cannot_be_reached_says_so_with_the_reason(tmp_path):
    # pyarrow refuses an S3 URL with an option it does not know before any request is made
    url = "s3://testing:testing@photos/pairs.csv?region=us-east-1&no_such_option=1"
    with pytest.raises(InputError) as refused:
        TableFile.open(url)
    message = str(refused.value)
    # named without its access keys or query (storage.shown), with pyarrow's reason
    assert message.startswith("s3://photos/pairs.csv: cannot reach the input: "), message
    assert "no_such_option" in message and "testing:testing" not in message


def test_an_empty_csv_says_it_has_no_header_row(tmp_path):
    path = tmp_path / "pairs.csv"  # not "empty.csv": the message must say it, not the file's name
    path.write_bytes(b"")
    with pytest.raises(InputError) as refused:
        TableFile.open(str(path))
    assert str(refused.value) == f"{path}: the file is empty (no header row)"
