"""Input validation before any Ray work: headers, column choice, captions."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tis_ray import errors
from tis_ray.columns import ResultColumns, image_bytes_columns, pick_columns
from tis_ray.errors import InputError, RowError
from tis_ray.records import check_caption
from tis_ray.tables import TableFile, input_format

# --- TableFile.open: columns -----------------------------------------------------------


def test_csv_header(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text("image_url,caption\nhttp://x/a.jpg,a cat\n", encoding="utf-8")
    assert TableFile.open(str(path)).columns == ["image_url", "caption"]


def test_csv_header_with_bom_is_not_part_of_the_first_name(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_bytes("\ufeffimage_url,caption\nhttp://x/a.jpg,a cat\n".encode())
    assert TableFile.open(str(path)).columns == ["image_url", "caption"]


def test_csv_quoted_header(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text('"image url","caption, long","say ""hi"""\nx,y,z\n', encoding="utf-8")
    assert TableFile.open(str(path)).columns == ["image url", "caption, long", 'say "hi"']


def test_csv_header_only(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text("url,text\n", encoding="utf-8")
    assert TableFile.open(str(path)).columns == ["url", "text"]


def test_parquet_schema(tmp_path):
    path = tmp_path / "pairs.parquet"
    table = pa.table({"image": ["a.jpg", "b.jpg"], "text": ["a cat", "a dog"], "id": [1, 2]})
    pq.write_table(table, path)
    assert TableFile.open(str(path)).columns == ["image", "text", "id"]


def test_empty_parquet_still_has_a_schema(tmp_path):
    path = tmp_path / "pairs.pq"
    pq.write_table(pa.table({"url": pa.array([], pa.string()), "caption": pa.array([], pa.string())}), path)
    assert TableFile.open(str(path)).columns == ["url", "caption"]


def test_missing_file(tmp_path):
    path = tmp_path / "nope.csv"
    with pytest.raises(InputError, match="no such file") as info:
        TableFile.open(str(path))
    assert str(path) in str(info.value)


def test_folder(tmp_path):
    folder = tmp_path / "data.csv"
    folder.mkdir()
    with pytest.raises(InputError, match="is a folder"):
        TableFile.open(str(folder))


def test_empty_csv(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        TableFile.open(str(path))


def test_bom_only_csv_is_empty(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_bytes(b"\xef\xbb\xbf")
    with pytest.raises(InputError, match="empty"):
        TableFile.open(str(path))


def test_empty_parquet_file_is_not_readable(tmp_path):
    path = tmp_path / "empty.parquet"
    path.write_bytes(b"")
    with pytest.raises(InputError, match="parquet") as info:
        TableFile.open(str(path))
    assert str(path) in str(info.value)


def test_garbage_parquet(tmp_path):
    path = tmp_path / "bad.parquet"
    path.write_bytes(b"image_url,caption\nnot,parquet\n")
    with pytest.raises(InputError, match="not a readable parquet file"):
        TableFile.open(str(path))


def test_non_utf8_csv(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("légende,url\n".encode("latin-1"))
    with pytest.raises(InputError, match="cannot read csv header"):
        TableFile.open(str(path))


@pytest.mark.parametrize("name", ["pairs.json", "pairs.txt", "pairs", "pairs.csv.bak"])
def test_unknown_extension(tmp_path, name):
    path = tmp_path / name
    path.write_text("image_url,caption\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"unknown file type \(expected \.csv or \.parquet\)"):
        TableFile.open(str(path))


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("a.csv", "csv"), ("A.CSV", "csv"), ("a.tsv", "csv"), ("a.csv.gz", "csv"),
        ("a.parquet", "parquet"), ("a.PQ", "parquet"),
    ],
)
def test_input_format(name, fmt):
    assert input_format(name) == fmt


# --- pick_columns -----------------------------------------------------------


@pytest.mark.parametrize(
    ("columns", "expected"),
    [
        (["image_path", "image", "url", "image_url", "text", "caption"], ("image_url", "caption")),
        (["image_path", "image", "url", "text"], ("url", "text")),
        (["image_path", "image", "caption"], ("image", "caption")),
        (["id", "image_path", "text"], ("image_path", "text")),
    ],
)
def test_autodetection_order(columns, expected):
    assert pick_columns(columns) == expected


def test_explicit_names_win_over_candidates():
    columns = ["image_url", "caption", "thumb", "alt"]
    assert pick_columns(columns, image_column="thumb", caption_column="alt") == ("thumb", "alt")
    assert pick_columns(columns, image_column="thumb") == ("thumb", "caption")
    assert pick_columns(columns, caption_column="alt") == ("image_url", "alt")


def test_missing_explicit_image_column_names_it():
    with pytest.raises(InputError) as info:
        pick_columns(["image_url", "caption"], image_column="photo")
    message = str(info.value)
    assert "'photo'" in message and "image" in message
    assert "image_url, caption" in message  # shows what is there


def test_missing_explicit_caption_column_names_it():
    with pytest.raises(InputError, match=r"no caption column 'alt'"):
        pick_columns(["image_url", "caption"], caption_column="alt")


def test_no_image_candidate_mentions_flag():
    with pytest.raises(InputError) as info:
        pick_columns(["id", "photo", "caption"])
    message = str(info.value)
    assert "--image-column" in message
    assert "image_url" in message and "id, photo, caption" in message


def test_no_caption_candidate_mentions_flag():
    with pytest.raises(InputError, match="--caption-column"):
        pick_columns(["image_url", "alt"])


def test_no_columns_at_all():
    with pytest.raises(InputError, match="--image-column"):
        pick_columns([])


@pytest.mark.parametrize("clash", ["similarity", "cosine", "error"])
def test_result_column_clash(clash):
    with pytest.raises(InputError, match=rf"result column\(s\) {clash}"):
        pick_columns(["image_url", "caption", clash])


def test_all_result_columns_are_listed():
    with pytest.raises(InputError, match=r"similarity, cosine, error"):
        pick_columns(["image_url", "caption", "error", "cosine", "similarity"])


def test_same_column_twice():
    with pytest.raises(InputError, match=r"same column 'caption'"):
        pick_columns(["image_url", "caption"], image_column="caption")
    with pytest.raises(InputError, match=r"same column 'url'"):
        pick_columns(["url", "caption"], caption_column="url")


@pytest.mark.parametrize(("columns", "expected"), [
    (["SAMPLE_ID", "URL", "TEXT", "HEIGHT", "WIDTH", "LICENSE", "NSFW"], ("URL", "TEXT")),  # LAION
    (["uid", "url", "text", "original_width"], ("url", "text")),  # DataComp
    (["id", "url", "text", "clip_similarity_vitb32"], ("url", "text")),  # COYO
    (["Image_URL", "Caption", "url"], ("Image_URL", "Caption")),  # candidates in their order, in any case
    (["URL", "url", "Text", "text"], ("url", "text")),  # the same spelling first
])
def test_public_layouts_are_found_in_any_case(columns, expected):
    assert pick_columns(columns) == expected


def test_a_name_in_two_cases_is_refused_with_the_flag():
    with pytest.raises(InputError,
                       match=r"several columns named 'url' in different cases \(Url, URL\).*--image-column"):
        pick_columns(["Url", "URL", "caption"])


def test_a_column_of_image_bytes_wins_over_a_column_of_urls():
    schema = pa.schema([("url", pa.string()), ("caption", pa.string()), ("jpg", pa.binary()),
                        ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
                        ("tags", pa.list_(pa.string()))])
    held = image_bytes_columns(schema)
    assert held == {"jpg", "image"}
    assert pick_columns(schema.names, bytes_columns=held) == ("image", "caption")  # HF's name first
    assert pick_columns(["url", "caption", "jpg"], bytes_columns={"jpg"}) == ("jpg", "caption")  # img2dataset
    assert pick_columns(["url", "caption", "jpg"], image_column="url", bytes_columns={"jpg"}) == ("url", "caption")


def test_prefix_names_the_results_apart_and_the_refusal_names_it():
    laion = ["SAMPLE_ID", "URL", "TEXT", "similarity"]
    with pytest.raises(InputError) as refused:
        pick_columns(laion)
    assert "--prefix" in str(refused.value) and "tis_similarity" in str(refused.value)
    results = ResultColumns("tis_")
    assert results.names == ("tis_similarity", "tis_cosine", "tis_error")
    assert pick_columns(laion, results=results) == ("URL", "TEXT")
    with pytest.raises(InputError, match=r"result column\(s\) tis_error"):
        pick_columns([*laion, "tis_error"], results=results)


# --- check_caption ----------------------------------------------------------


@pytest.mark.parametrize("value", [None, float("nan"), "", " ", "  \n", "\t\r\n", "\u3000", "\u2003\u00a0"])
def test_empty_captions(value):
    with pytest.raises(RowError) as info:
        check_caption(value)
    assert info.value.kind == errors.EMPTY_CAPTION


@pytest.mark.parametrize(("value", "error"), [
    (None, "empty_caption: the caption is missing"),
    (float("nan"), "empty_caption: the caption is missing"),  # a float column's "missing"
    ("", "empty_caption: the caption is empty"),
    (" \t\u3000", "empty_caption: the caption is empty"),
])
def test_the_error_column_says_whether_the_caption_is_missing_or_blank(value, error):
    with pytest.raises(RowError) as info:
        check_caption(value)
    assert str(info.value) == error


@pytest.mark.parametrize(
    "text",
    [
        "a cat on a mat",
        "🐈‍⬛ a black cat 🚀",
        "قطة على سجادة",  # RTL
        "\u202egnirts desrever",  # RTL override
        "a\x00b",  # NUL kept, not our job to strip
        "  padded  ",  # kept unchanged, not stripped
        "line one\nline two",
    ],
)
def test_captions_are_kept_unchanged(text):
    assert check_caption(text) == text


def test_non_string_caption_becomes_text():
    assert check_caption(42) == "42"
    assert check_caption(0) == "0"
    assert check_caption(1.5) == "1.5"


def test_nan_caption_from_parquet_is_missing_not_the_text_nan(tmp_path):
    # a float caption column (e.g. an all-missing one written by pandas) holds NaN, not null
    path = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({"image_url": ["a.jpg"], "caption": pa.array([float("nan")])}), path)
    (value,) = pq.read_table(path).column("caption").to_pylist()
    with pytest.raises(RowError) as info:
        check_caption(value)
    assert info.value.kind == errors.EMPTY_CAPTION


@given(st.text())
def test_check_caption_property(text):
    if text.strip():
        assert check_caption(text) == text
    else:
        with pytest.raises(RowError) as info:
            check_caption(text)
        assert info.value.kind == errors.EMPTY_CAPTION
