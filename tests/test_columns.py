"""Column names beyond the choice of columns (tests/test_records.py covers that): each refusal's
whole text, the result columns of several models, the pixel columns models share, and the
embedding column's type.

Expected names come from the README's own examples; the embedding type from what a Parquet
file really reads back.
"""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tis_ray.columns import (
    COSINE,
    PIXELS,
    SIMILARITY,
    ResultColumns,
    embedding_type,
    pick_columns,
    pixel_columns,
    pixels_column,
)
from tis_ray.errors import InputError


@pytest.mark.parametrize(("columns", "asked", "message"), [
    (["image_url", "caption"], {"image_column": "photo"},
     "no image column 'photo' in the input (columns: image_url, caption)"),
    (["image_url", "caption"], {"caption_column": "alt"},
     "no caption column 'alt' in the input (columns: image_url, caption)"),
    (["id", "photo", "caption"], {},
     "cannot find the image column: none of image_url, url, image, image_path (in any case) is among "
     "the input's columns (id, photo, caption); name it with --image-column"),
    (["image_url", "alt"], {},
     "cannot find the caption column: none of caption, text (in any case) is among "
     "the input's columns (image_url, alt); name it with --caption-column"),
    (["Jpg", "JPG", "caption"], {"bytes_columns": frozenset({"Jpg", "JPG"})},
     "the input has several columns named 'jpg' in different cases (Jpg, JPG); choose one with --image-column"),
])
def test_each_refusal_of_the_columns_says_what_is_wrong_and_what_to_do(columns, asked, message):
    with pytest.raises(InputError) as refused:
        pick_columns(columns, **asked)
    assert str(refused.value) == message


def test_one_model_keeps_the_plain_names():
    results = ResultColumns(models=("b32",), kinds=(SIMILARITY, COSINE))
    assert results.written == ["similarity", "cosine", "error"]
    assert (results.of(SIMILARITY, "b32"), results.similarity, results.cosine) == ("similarity", "similarity", "cosine")


def test_two_models_end_each_name_in_the_model_one_model_after_another():
    # README, "Output": similarity_b32, cosine_b32, ..., then the one error column
    results = ResultColumns(models=("b32", "sig"), kinds=(SIMILARITY, COSINE))
    assert results.written == ["similarity_b32", "cosine_b32", "similarity_sig", "cosine_sig", "error"]
    assert results.of(COSINE, "sig") == "cosine_sig"
    with pytest.raises(ValueError, match=r"several models \(b32, sig\)"):
        _ = results.similarity  # which model's? the caller must say


def test_models_with_the_same_preprocessing_share_one_pixel_column():
    distinct, columns = pixel_columns(("clip-224", "siglip-256", "clip-224", "siglip-384"))
    assert distinct == ("clip-224", "siglip-256", "siglip-384")  # in first-seen order
    assert columns[0] == columns[2]  # the two CLIP models read the same pixels
    assert len(set(columns)) == 3 and columns[0] != columns[1] != columns[3]
    assert columns[0] == pixels_column(0) == PIXELS  # the first is the column a one-model job uses
    assert columns == (pixels_column(0), pixels_column(1), pixels_column(0), pixels_column(2))


def test_each_distinct_preprocessing_has_its_own_internal_pixel_column():
    names = [pixels_column(i) for i in range(4)]
    assert names[0] == PIXELS and len(set(names)) == 4
    assert all(name.startswith("__tis_") for name in names)  # internal, never a user's column


@pytest.mark.parametrize(("dtype", "numpy_dtype"), [("float16", np.float16), ("float32", np.float32)])
def test_the_embedding_type_is_what_a_parquet_file_reads_back(dtype, numpy_dtype):
    written = pa.FixedSizeListArray.from_arrays(pa.array(np.arange(12, dtype=numpy_dtype)), 4)
    buffer = io.BytesIO()
    pq.write_table(pa.table({"image_embedding": written}), buffer)
    read_back = pq.read_table(io.BytesIO(buffer.getvalue())).schema.field("image_embedding").type
    made = embedding_type(dtype, 4)
    assert made == read_back  # pyarrow's == leaves the item's name out, so compare it too:
    assert made.value_field.name == read_back.value_field.name == "element" != written.type.value_field.name
