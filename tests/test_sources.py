"""classify_image_ref: pure string logic deciding where a row's image comes from."""

from __future__ import annotations

import os

import pytest

from tis_ray import errors
from tis_ray.errors import RowError
from tis_ray.sources import (
    ImageSource,
    base_dir_of,
    checked_image_bytes,
    classify_image_ref,
    image_value,
)

BASE = os.path.abspath(os.sep + os.path.join("data", "inputs"))


def kind_of(value: object, base_dir: str = BASE) -> str:
    with pytest.raises(RowError) as info:
        classify_image_ref(value, base_dir)
    return info.value.kind


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/cat.jpg",
        "https://example.com/cat.jpg",
        "https://example.com:8443/a/b/cat.jpg?size=large&x=1#frag",
        "http://example.com/caf%C3%A9%20au%20lait.jpg",  # percent-encoded path
        "https://example.com/café/ü ber.jpg",  # non-ASCII path, raw space
        "https://bücher.example/x.jpg",  # IDN host
        "http://127.0.0.1:8080/x.jpg",
        "http://[::1]:8080/x.jpg",
        "HTTPS://Example.COM/x.jpg",  # scheme is case-insensitive
    ],
)
def test_http_urls_are_kept_verbatim(url):
    assert classify_image_ref(url, BASE) == ImageSource("http", url)


def test_http_url_surrounding_whitespace_is_stripped():
    assert classify_image_ref("  https://example.com/x.jpg\n", BASE) == ImageSource("http", "https://example.com/x.jpg")


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("file:///tmp/cat.jpg", "/tmp/cat.jpg"),
        ("file:///tmp/my%20photos/cat%20one.jpg", "/tmp/my photos/cat one.jpg"),
        ("file:///tmp/caf%C3%A9.jpg", "/tmp/café.jpg"),
        ("file://localhost/tmp/cat.jpg", "/tmp/cat.jpg"),
        ("FILE:///tmp/a/../cat.jpg", "/tmp/cat.jpg"),
    ],
)
def test_file_urls_become_paths(url, path):
    assert classify_image_ref(url, BASE) == ImageSource("file", os.path.normpath(path))


def test_relative_paths_resolve_against_base_dir():
    assert classify_image_ref("images/cat.jpg", BASE) == ImageSource("file", os.path.join(BASE, "images", "cat.jpg"))
    assert classify_image_ref("./cat.jpg", BASE) == ImageSource("file", os.path.join(BASE, "cat.jpg"))
    assert classify_image_ref("../cat.jpg", BASE) == ImageSource("file", os.path.join(os.path.dirname(BASE), "cat.jpg"))
    assert classify_image_ref("my photos/cat one.jpg", BASE).location == os.path.join(BASE, "my photos", "cat one.jpg")


def test_absolute_paths_ignore_base_dir():
    assert classify_image_ref("/srv/img/cat.jpg", BASE) == ImageSource("file", "/srv/img/cat.jpg")
    assert classify_image_ref("/srv/img//x/../cat.jpg", BASE) == ImageSource("file", "/srv/img/cat.jpg")


def test_windows_drive_path_is_a_path_not_a_scheme():
    source = classify_image_ref("C:\\x.jpg", BASE)
    assert source.kind == "file"
    assert source.location.endswith("C:\\x.jpg")
    assert classify_image_ref("d:/photos/x.jpg", BASE).kind == "file"


@pytest.mark.parametrize("value", [None, "", "   ", "\t\n ", float("nan")])
def test_missing_values(value):
    assert kind_of(value) == errors.MISSING_IMAGE


@pytest.mark.parametrize(
    "value",
    ["ftp://example.com/x.jpg", "data:image/png;base64,iVBORw0KGgo=", "hdfs://nn/x.jpg", "mailto:a@b"],
)
def test_unsupported_schemes(value):
    assert kind_of(value) == errors.UNSUPPORTED_SCHEME


@pytest.mark.parametrize("url", ["s3://bucket/key.jpg", "gs://b/k", "S3://bucket/a/b.png?endpoint_override=h:9000"])
def test_object_store_urls_are_kept_verbatim(url):
    assert classify_image_ref(url, BASE) == ImageSource("object", url)


def test_relative_paths_in_an_object_store_input_stay_in_its_bucket():
    base = base_dir_of("s3://bucket/runs/pairs.csv?region=us-east-1")
    assert base == "s3://bucket/runs?region=us-east-1"
    assert classify_image_ref("img/cat.jpg", base) == ImageSource("object", "s3://bucket/runs/img/cat.jpg?region=us-east-1")
    assert classify_image_ref("../cat.jpg", base) == ImageSource("object", "s3://bucket/cat.jpg?region=us-east-1")
    assert classify_image_ref("/data/cat.jpg", base) == ImageSource("file", os.path.normpath("/data/cat.jpg"))


@pytest.mark.parametrize(
    "value",
    [
        "http://",
        "https://",
        "http://[::1]:99999/",
        "http://example.com:0/x.jpg",
        "http://example.com:abc/x.jpg",
        "http://exa mple.com/",
        "http://:80/x.jpg",
        "file://remotehost/x",
        "file://",
        "images/a\x00b.jpg",
        "http://[]@",  # yarl 1.25 raises IndexError on it
        "http://[::1]@/x.jpg",
        "file://[",  # urlsplit raises ValueError on it
        "file:///images/a%00b.jpg",  # open() would raise ValueError on the NUL
    ],
)
def test_invalid_urls(value):
    assert kind_of(value) == errors.INVALID_URL


@pytest.mark.parametrize("value", [42, 3.5, b"http://example.com/x.jpg", ["x.jpg"]])
def test_non_string_values_are_invalid(value):
    assert kind_of(value) == errors.INVALID_URL


def test_row_error_text_carries_kind():
    with pytest.raises(RowError) as info:
        classify_image_ref("ftp://example.com/x.jpg", BASE)
    assert str(info.value).startswith("unsupported_scheme: ")
    assert "ftp" in info.value.detail


def test_base_dir_of(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert base_dir_of(None) == os.getcwd()
    assert base_dir_of("") == os.getcwd()
    assert base_dir_of("pairs.csv") == str(tmp_path)
    assert base_dir_of("sub/pairs.csv") == str(tmp_path / "sub")
    assert base_dir_of("/srv/data/pairs.parquet") == "/srv/data"


def test_relative_path_through_base_dir_of(tmp_path):
    base = base_dir_of(str(tmp_path / "pairs.csv"))
    assert classify_image_ref("img/x.jpg", base) == ImageSource("file", str(tmp_path / "img" / "x.jpg"))


def test_relative_file_url_resolves_against_base_dir():
    assert classify_image_ref("file:img/x.jpg", BASE) == ImageSource("file", os.path.join(BASE, "img", "x.jpg"))


def test_image_bytes_held_in_the_input():
    """A binary cell or Hugging Face's {bytes, path} struct is the image itself; a struct without bytes names it."""
    assert image_value(b"\xff\xd8") == b"\xff\xd8"
    assert image_value({"bytes": b"\xff\xd8", "path": "0001.jpg"}) == b"\xff\xd8"
    assert image_value({"bytes": None, "path": "images/0001.jpg"}) == "images/0001.jpg"
    assert image_value("https://example.com/a.jpg") == "https://example.com/a.jpg"
    assert checked_image_bytes(b"abc", max_bytes=3) == b"abc"
    with pytest.raises(RowError) as big:
        checked_image_bytes(b"abcd", max_bytes=3)
    assert str(big.value) == "too_large: the image is 4 bytes, over the limit of 3"
    with pytest.raises(RowError) as empty:
        checked_image_bytes(b"", max_bytes=3)
    assert empty.value.kind == errors.MISSING_IMAGE


# The whole message of every refusal: the kind and a detail that says what is wrong with
# the cell (README: "a clear one-line message"). Found missing by a mutation run, which
# could blank any of these texts with no test failing.
@pytest.mark.parametrize(("cell", "message"), [
    (None, "missing_image: the image column is empty"),
    (float("nan"), "missing_image: the image column is empty"),
    ("   ", "missing_image: the image column is empty"),
    (12, "invalid_url: expected a URL or path, got int"),
    ("a\x00b.jpg", "invalid_url: contains a NUL byte"),
    ("http://[v1.x]/a.jpg", "invalid_url: 'http://[v1.x]/a.jpg': a bracketed host must be an IPv6 address"),
    ("http://u@[v1.x]/a.jpg", "invalid_url: 'http://u@[v1.x]/a.jpg': a bracketed host must be an IPv6 address"),
    ("http://a@b@[v1.x]/a.jpg", "invalid_url: 'http://a@b@[v1.x]/a.jpg': a bracketed host must be an IPv6 address"),
    ("http://a.com:0/x.jpg", "invalid_url: 'http://a.com:0/x.jpg' has an invalid port"),
    ("http://a.com:65536/x.jpg", "invalid_url: 'http://a.com:65536/x.jpg': Port out of range 0-65535"),  # yarl's words
    ("http:///x.jpg", "invalid_url: 'http:///x.jpg' has no host"),
    ("http://a b.com/x.jpg", "invalid_url: 'http://a b.com/x.jpg' has white space in its host"),
    ("http://[]@/x", "invalid_url: 'http://[]@/x': string index out of range"),  # yarl's own IndexError
    ("file://[", "invalid_url: 'file://[': Invalid IPv6 URL"),
    ("file://remote/x.jpg", "invalid_url: file URL 'file://remote/x.jpg' names a remote host"),
    ("file://", "invalid_url: file URL 'file://' has no path"),
    ("file:///a%00b.jpg", "invalid_url: file URL 'file:///a%00b.jpg' holds an escaped NUL byte"),
])
def test_each_refusal_says_what_is_wrong_in_one_line(cell, message):
    with pytest.raises(RowError) as refused:
        classify_image_ref(cell, "/base")
    assert str(refused.value) == message


@pytest.mark.parametrize("port", [1, 65535])
def test_the_lowest_and_highest_ports_are_urls_like_any_other(port):
    url = f"http://a.com:{port}/x.jpg"
    assert classify_image_ref(url, "/base") == ImageSource("http", url)


def test_an_empty_bytes_cell_is_a_missing_image():
    with pytest.raises(RowError) as refused:
        checked_image_bytes(b"", 10)
    assert str(refused.value) == "missing_image: the image cell holds no bytes"
