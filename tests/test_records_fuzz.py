"""Property tests for reading records and the CSV round trip, through our real reader and writer.

The reader is the one the pipeline gives Ray Data (`csv_read_options`, streamed by
pyarrow's ``open_csv`` as Ray's CSV datasource does); the writer is `write_atomically`.
Any text survives except lone surrogates, which UTF-8 cannot encode; NUL, CR, LF,
quotes, commas, a BOM inside a field and every other code point come back unchanged.
"""

from __future__ import annotations

import csv

import pyarrow as pa
import pyarrow.csv as pacsv
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tis_ray.columns import pick_columns
from tis_ray.output import OutputFile, write_atomically
from tis_ray.tables import TableFile, csv_read_options

# Any Unicode that UTF-8 can carry: everything but surrogates.
TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=60)
CSV_SPECIALS = st.text(st.sampled_from(list('a ,"\'\r\n\x00\t\ufeff\u202e🐱ש')), max_size=30)
CAPTION = st.one_of(TEXT, CSV_SPECIALS)
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def read_like_the_pipeline(path: str) -> pa.Table:
    parse_options, convert_options = csv_read_options(TableFile.open(path).schema)
    reader = pacsv.open_csv(path, read_options=pacsv.ReadOptions(use_threads=False),
                            parse_options=parse_options, convert_options=convert_options)
    return reader.read_all()


def write_with_python_csv(path, header: list[str], rows: list[list[str]], bom: bool = False) -> None:
    with open(path, "w", newline="", encoding="utf-8-sig" if bom else "utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


@FUZZ
@given(captions=st.lists(CAPTION, min_size=1, max_size=8), bom=st.booleans())
def test_any_caption_written_by_a_csv_writer_is_read_back_unchanged(tmp_path_factory, captions, bom):
    path = str(tmp_path_factory.mktemp("fuzz") / "in.csv")
    images = [f"img/{i}.jpg" for i in range(len(captions))]
    write_with_python_csv(path, ["image_url", "caption"], [list(r) for r in zip(images, captions)], bom)
    table = read_like_the_pipeline(path)
    assert table.column_names == ["image_url", "caption"]
    assert table.column("caption").to_pylist() == captions
    assert table.column("image_url").to_pylist() == images


@FUZZ
@given(captions=st.lists(CAPTION, min_size=1, max_size=8))
def test_any_caption_survives_our_writer_then_our_reader(tmp_path_factory, captions):
    path = str(tmp_path_factory.mktemp("fuzz") / "out.csv")
    table = pa.table({"caption": pa.array(captions, pa.string()),
                      "similarity": pa.array([0.5] * len(captions), pa.float64()),
                      "error": pa.array([None] * len(captions), pa.string())})
    for _ in write_atomically([table], OutputFile.of(path), table.schema):
        pass
    assert read_like_the_pipeline(path).column("caption").to_pylist() == captions


# Header names: distinct, non-empty; the first may not start with a BOM (the file's BOM is dropped).
NAMES = st.lists(st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=12),
                 min_size=2, max_size=6, unique=True).filter(lambda names: not names[0].startswith("\ufeff"))


@FUZZ
@given(names=NAMES, bom=st.booleans())
def test_any_header_is_read_as_written(tmp_path_factory, names, bom):
    path = str(tmp_path_factory.mktemp("fuzz") / "in.csv")
    write_with_python_csv(path, names, [["x"] * len(names)], bom)
    assert TableFile.open(path).columns == names
    assert read_like_the_pipeline(path).column_names == names


@FUZZ
@given(names=NAMES, image=st.integers(0, 5), caption=st.integers(0, 5))
def test_explicit_columns_are_picked_or_refused_with_a_message(names, image, caption):
    from tis_ray.errors import InputError

    image_name, caption_name = names[image % len(names)], names[caption % len(names)]
    try:
        picked = pick_columns(names, image_name, caption_name)
    except InputError as exc:
        assert str(exc)
        assert image_name == caption_name or {"similarity", "cosine", "error"} & set(names)
    else:
        assert picked == (image_name, caption_name)
