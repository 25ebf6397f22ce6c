"""WebDataset inputs without Ray: which shards an input names, and the samples a tar stream
holds, read from shards the `webdataset` package's own `TarWriter` wrote."""

from __future__ import annotations

import io
import json
import tarfile

import pytest
from shard_files import bad_shard, good_shard, photo_sample, write_shard

from tis_ray.errors import InputError
from tis_ray.shards import expand_braces, is_shard_input, list_shards
from tis_ray.tar_samples import SampleLayout, read_samples, split_name

LAYOUT = SampleLayout()


def _samples(path, layout=LAYOUT):
    with open(path, "rb") as f:
        return list(read_samples(f, layout))


# --- which shards ------------------------------------------------------------


@pytest.mark.parametrize(("pattern", "expected"), [
    ("shards/{00000..00002}.tar", ["shards/00000.tar", "shards/00001.tar", "shards/00002.tar"]),
    ("s-{8..11}.tar", ["s-8.tar", "s-9.tar", "s-10.tar", "s-11.tar"]),
    ("s-{08..11}.tar", ["s-08.tar", "s-09.tar", "s-10.tar", "s-11.tar"]),
    ("{a,b}/{1..2}.tar", ["a/1.tar", "a/2.tar", "b/1.tar", "b/2.tar"]),
    ("s-{3..1}.tar", ["s-3.tar", "s-2.tar", "s-1.tar"]),
    ("s3://b/x-{0..1}.tar?scheme=http", ["s3://b/x-0.tar?scheme=http", "s3://b/x-1.tar?scheme=http"]),
    ("plain.tar", ["plain.tar"]),
    ("odd{}.tar", ["odd{}.tar"]),
])
def test_brace_expansion(pattern, expected):
    assert expand_braces(pattern) == expected


def test_shards_by_braces_folder_and_glob_in_order(tmp_path, monkeypatch):
    for name in ("00002.tar", "00000.tar", "00001.tar", "notes.txt", ".hidden.tar"):
        (tmp_path / name).write_bytes(b"x" * 3)
    monkeypatch.chdir(tmp_path)
    names = ["00000.tar", "00001.tar", "00002.tar"]
    assert [s.url for s in list_shards("{00000..00002}.tar")] == names
    assert [s.url for s in list_shards("{00002,00000}.tar")] == ["00002.tar", "00000.tar"]  # as written
    assert [s.url for s in list_shards(str(tmp_path))] == [str(tmp_path / n) for n in names]
    assert [s.url for s in list_shards(str(tmp_path / "0000[01].tar"))] == [str(tmp_path / n) for n in names[:2]]
    assert [s.size for s in list_shards("*.tar")] == [3, 3, 3]
    assert is_shard_input("{00000..00002}.tar") and is_shard_input(str(tmp_path))
    assert not is_shard_input("pairs.parquet")


def test_missing_shards_are_input_errors(tmp_path):
    (tmp_path / "00000.tar").write_bytes(b"")
    with pytest.raises(InputError, match=r"00001\.tar: no such shard"):
        list_shards(str(tmp_path / "{00000..00001}.tar"))
    with pytest.raises(InputError, match="no .tar shards found"):
        list_shards(str(tmp_path / "*.none.tar"))
    with pytest.raises(InputError, match="wildcards are allowed in the shard's file name only"):
        list_shards(str(tmp_path / "*" / "0.tar"))


# --- samples from a tar stream -------------------------------------------------


def test_samples_in_order_with_image_caption_and_json_fields(tmp_path, photos):
    expected = good_shard(tmp_path / "00000.tar", 0, 8, photos)
    layout = SampleLayout.of(None, None, ("width", "source", "absent"), 20_000_000)
    samples = _samples(tmp_path / "00000.tar", layout)
    assert [s.key for s in samples] == [e.key for e in expected]
    assert [s.caption for s in samples] == [e.caption for e in expected]
    assert all(s.image == photos[e.photo].read_bytes() for s, e in zip(samples, expected))
    assert samples[0].fields == {"width": "512", "source": "test", "absent": None}  # json values as text
    assert all(s.error is None for s in samples)


def test_caption_from_a_json_field_and_image_from_a_chosen_entry(tmp_path, photos):
    sample = {**photo_sample("k0", "chelsea", photos), "png": b"png bytes"}
    write_shard(tmp_path / "s.tar", [sample])
    [read] = _samples(tmp_path / "s.tar", SampleLayout.of("PNG", "json.caption", (), 1000))
    assert (read.image, read.caption) == (b"png bytes", "json says chelsea")


def test_bad_samples_are_explained_and_a_cut_costs_only_its_sample(tmp_path, photos):
    expected = bad_shard(tmp_path / "bad.tar", 3, photos)
    samples = _samples(tmp_path / "bad.tar")
    assert [s.key for s in samples] == [e.key for e in expected]
    assert samples[1].error == "missing_image: the sample has no jpg, jpeg, png or webp entry"
    assert samples[-1].error.startswith("bad_shard: the shard is cut short in or after this sample")
    # the rest are read as they are: their image and caption errors come from decoding and checking
    assert [s.error for s in samples[:-1]] == [None, samples[1].error, None, None, None, None]


def test_an_entry_over_the_byte_cap_is_skipped_unread(tmp_path, photos):
    write_shard(tmp_path / "s.tar", [photo_sample("big", "retina", photos), photo_sample("ok", "coffee", photos)])
    cap = photos["coffee"].stat().st_size
    samples = _samples(tmp_path / "s.tar", SampleLayout.of(None, None, (), cap))
    assert samples[0].image is None and samples[0].error.startswith("too_large: the jpg entry is")
    assert samples[1].image == photos["coffee"].read_bytes()


def test_not_a_tar_file_is_one_row_for_the_shard(tmp_path):
    (tmp_path / "junk.tar").write_bytes(b"this is not a tar archive at all" * 10)
    [row] = _samples(tmp_path / "junk.tar")
    assert row.key is None and row.error.startswith("bad_shard: not a readable tar file")
    (tmp_path / "empty.tar").write_bytes(b"")
    assert [s.key for s in _samples(tmp_path / "empty.tar")] == [None]


def test_a_key_that_comes_back_later_is_a_sample_of_its_own(tmp_path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in (("a.jpg", b"1"), ("b.jpg", b"2"), ("a.txt", b"late caption"), ("dir/", b"")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    samples = list(read_samples(io.BytesIO(buffer.getvalue()), LAYOUT))
    assert [(s.key, s.image, s.caption) for s in samples] == [("a", b"1", None), ("b", b"2", None),
                                                             ("a", None, "late caption")]


@pytest.mark.parametrize(("name", "parts"), [
    ("000001.jpg", ("000001", "jpg")), ("d/000001.JSON", ("d/000001", "json")),
    ("x.seg.png", ("x", "seg.png")), ("noext", None), (".hidden", None),
])
def test_entry_names(name, parts):
    assert split_name(name) == parts


def test_layout_refuses_a_caption_that_is_the_image():
    with pytest.raises(InputError, match="same entry"):
        SampleLayout.of("jpg", "jpg", (), 10)
    with pytest.raises(InputError, match="json.FIELD"):
        SampleLayout.of(None, "json.", (), 10)
    assert SampleLayout.of(None, "json.caption", ("w",), 10).reads_json
    assert json.dumps(SampleLayout().image_entries) == '["jpg", "jpeg", "png", "webp"]'
