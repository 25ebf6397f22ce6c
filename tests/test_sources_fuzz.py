"""Property tests for `classify_image_ref`: any cell value gives a source or a `RowError`, nothing
else, and what it gives is consistent with itself and with what the fetcher does next."""

from __future__ import annotations

import os

import yarl
from hypothesis import given, provisional, settings
from hypothesis import strategies as st

from tis_ray import errors
from tis_ray.errors import RowError
from tis_ray.hosts import host_key
from tis_ray.sources import HTTP_SCHEMES, ImageSource, classify_image_ref

BASE = "/data/input"
FUZZ = settings(max_examples=300, deadline=None)

ANY_TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=80)
URL_TOKENS = [*"aZ09.-_~:/?#[]@!$&'()*+,;=% \t\x00é漢🐱\\", "%00", "%2F", "%25", "%zz", "[::1]", "]@", "localhost"]
URL_PARTS = st.lists(st.sampled_from(URL_TOKENS), max_size=12).map("".join)
SCHEMES = st.sampled_from(["http", "https", "HTTP", "file", "ftp", "data", "javascript", "c", "h.t+t-p", ""])
URL_LIKE = st.builds(lambda scheme, sep, rest: f"{scheme}{sep}{rest}", SCHEMES,
                     st.sampled_from(["://", ":", ":///", "//", ""]), URL_PARTS)
CELLS = st.one_of(ANY_TEXT, URL_LIKE, provisional.urls(), st.none(), st.integers(), st.floats(), st.booleans())
ROW_ERROR_KINDS = {errors.MISSING_IMAGE, errors.INVALID_URL, errors.UNSUPPORTED_SCHEME}


def classify(value) -> ImageSource | RowError:
    try:
        return classify_image_ref(value, BASE)
    except RowError as error:
        return error


@FUZZ
@given(CELLS)
def test_any_cell_is_a_source_or_a_row_error_of_a_documented_kind(value):
    outcome = classify(value)  # anything but RowError escaping fails the test
    if isinstance(outcome, RowError):
        assert outcome.kind in ROW_ERROR_KINDS
        assert str(outcome).startswith(f"{outcome.kind}: ")
    else:
        assert outcome.kind in ("http", "file")


@FUZZ
@given(CELLS)
def test_an_http_source_is_a_url_the_fetcher_can_use(value):
    outcome = classify(value)
    if isinstance(outcome, ImageSource) and outcome.kind == "http":
        url = yarl.URL(outcome.location)
        assert url.scheme in HTTP_SCHEMES and url.raw_host
        assert host_key(url)  # the fetcher keys its politeness by this; it must not raise
        assert outcome.location == value.strip()


@FUZZ
@given(CELLS)
def test_a_file_source_is_an_absolute_normal_path(value):
    outcome = classify(value)
    if isinstance(outcome, ImageSource) and outcome.kind == "file":
        assert os.path.isabs(outcome.location)
        assert os.path.normpath(outcome.location) == outcome.location
        assert "\x00" not in outcome.location


@FUZZ
@given(CELLS)
def test_classifying_again_gives_the_same_answer(value):
    first, second = classify(value), classify(value)
    assert type(first) is type(second)
    if isinstance(first, RowError):
        assert (first.kind, first.detail) == (second.kind, second.detail)
        return
    assert first == second
    assert classify(first.location) == first  # a source's own location means the same source


@FUZZ
@given(st.one_of(ANY_TEXT, URL_LIKE), st.text(" \t\n\r", max_size=3), st.text(" \t\n\r", max_size=3))
def test_surrounding_white_space_does_not_change_the_answer(value, before, after):
    plain, padded = classify(value), classify(before + value + after)
    if isinstance(plain, RowError):
        assert isinstance(padded, RowError) and padded.kind == plain.kind
    else:
        assert padded == plain
