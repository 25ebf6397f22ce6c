"""Each model family against its own library, used as documented.

The reference is transformers' ``model(**processor(text=..., images=..., ...))`` with
``AutoProcessor`` and ``AutoModel`` on whole-image decodes of the repo's photos, in
float32: CLIP with ``padding=True``, SigLIP and SigLIP 2 with ``padding="max_length"``
and ``max_length=64`` (their model cards' usage). Nothing here re-derives what the code
under test computes: similarities come from the model's own ``image_embeds`` and
``text_embeds``, probabilities from ``sigmoid(logits_per_image)``.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from functools import lru_cache

import numpy as np
import pyarrow.csv as pacsv
import pytest
import torch
from PIL import Image
from reference import (
    CAPTIONS,
    LONG_CAPTION,
    PHOTOS,
    SCORE_TOLERANCE,
    library,
    library_cosines,
    library_outputs,
    photos_rgb,
)
from transformers import BertConfig, Siglip2Config

from tis_ray import score_file
from tis_ray.cli import main as cli_main
from tis_ray.config import FetchConfig, ModelConfig, PipelineConfig
from tis_ray.errors import ModelLoadError
from tis_ray.loading import load_preprocess_spec, model_family
from tis_ray.preprocess import resize_and_crop
from tis_ray.scorer import TEXT_GROUP_ROWS, ClipScorer, SiglipScorer, make_scorer, normalize

FAMILY_FIXTURES = {"clip": "tiny_model", "siglip": "siglip_model", "siglip2": "siglip2_model"}
SCORER_CLASSES = {"clip": ClipScorer, "siglip": SiglipScorer, "siglip2": SiglipScorer}
# |ours - library|: the float32 rounding a cosine or an embedding may carry (the same bound
# test_scorer.py holds CLIP to); SCORE_TOLERANCE, the bound, is in `reference`.
COSINE_TOLERANCE = 1e-5
PIXEL_TOLERANCE = 1e-5  # tests/test_preprocess.py's bound against the processor's pixel_values
# Rounding to 4 decimals may leave two equal scores a float's width over 1e-4 apart.
ROUNDING_SLACK = 1e-9


@pytest.fixture(params=sorted(FAMILY_FIXTURES))
def family(request) -> tuple[str, str]:
    """(family, checkpoint folder) for each family's test model."""
    return request.param, request.getfixturevalue(FAMILY_FIXTURES[request.param])


@lru_cache(maxsize=8)
def _scorer(model_dir: str):
    return make_scorer(ModelConfig(model=model_dir, device="cpu", dtype="float32"))


def our_pixels(scorer, images: list[Image.Image]) -> np.ndarray:
    return np.stack([resize_and_crop(image, scorer.preprocess) for image in images])


def test_each_family_gets_its_own_scorer(family):
    name, model_dir = family
    scorer = _scorer(model_dir)
    assert type(scorer) is SCORER_CLASSES[name]
    assert model_family(model_dir) == scorer.family


def test_preprocessed_pixels_equal_the_processors(family, photos):
    """The fetch stage's uint8 resize (and crop, for CLIP) plus the scorer's normalisation give
    the processor's pixel_values: resize mode, size, resample, mean and std all read right."""
    name, model_dir = family
    _, processor = library(model_dir)
    # AutoProcessor's default backend here is PIL (no torchvision installed); the torchvision
    # backend resizes with torch and would give other pixels, so say which one this compares with.
    assert type(processor.image_processor).__name__.endswith("Pil")
    images = photos_rgb(photos)
    expected = processor.image_processor(images=images, return_tensors="np")["pixel_values"]
    scorer = _scorer(model_dir)
    actual = normalize(torch.from_numpy(our_pixels(scorer, images)), scorer.preprocess).numpy()
    assert actual.shape == expected.shape == (len(images), 3, 224, 224)
    assert np.abs(actual - expected).max() <= PIXEL_TOLERANCE


def test_similarity_and_embeddings_equal_the_library(family, photos):
    name, model_dir = family
    images = photos_rgb(photos)
    scorer = _scorer(model_dir)
    result = scorer.score(our_pixels(scorer, images), list(CAPTIONS))
    _, outputs = library_outputs(name, model_dir, images, CAPTIONS)
    want = library_cosines(outputs)
    assert np.abs(result.cosine - want).max() <= COSINE_TOLERANCE
    ours = [round((c + 1) / 2, 4) for c in result.cosine.tolist()]
    theirs = [round((c + 1) / 2, 4) for c in want.tolist()]
    assert np.abs(np.subtract(ours, theirs)).max() <= SCORE_TOLERANCE + ROUNDING_SLACK
    assert np.abs(result.image_embeddings - outputs.image_embeds.numpy()).max() <= COSINE_TOLERANCE
    assert np.abs(result.text_embeddings - outputs.text_embeds.numpy()).max() <= COSINE_TOLERANCE
    assert result.truncated.tolist() == [c == LONG_CAPTION for c in CAPTIONS]


def test_siglip_probability_is_the_sigmoid_of_the_librarys_logits(family, photos):
    name, model_dir = family
    images = photos_rgb(photos)
    scorer = _scorer(model_dir)
    result = scorer.score(our_pixels(scorer, images), list(CAPTIONS))
    if name == "clip":
        assert result.probability is None  # no trained pair head: nothing to report
        return
    _, outputs = library_outputs(name, model_dir, images, CAPTIONS)
    want = torch.sigmoid(outputs.logits_per_image).diagonal().numpy()
    assert result.probability.dtype == np.float64
    assert np.abs(result.probability - want).max() <= SCORE_TOLERANCE
    # The test model's pair head puts these mid-range, where a formula without the scale or the
    # bias would be far off; probabilities near 0 or 1 would hide that.
    assert 0.05 < want.min() and want.max() < 0.95


def test_siglip_text_follows_the_processor_on_the_attention_mask(siglip_model, photos, tmp_path):
    """The released SigLIP tokenizers return no attention mask and the model then attends to the
    padding; a tokenizer that does return one changes every score. The scorer passes what the
    tokenizer returns, as the processor does, so it matches the library either way."""
    masked = tmp_path / "with-mask"
    shutil.copytree(siglip_model, masked)
    config = json.loads((masked / "tokenizer_config.json").read_text())
    config["model_input_names"] = ["input_ids", "attention_mask"]
    (masked / "tokenizer_config.json").write_text(json.dumps(config))
    images = photos_rgb(photos)
    results = {}
    for model_dir in (siglip_model, str(masked)):
        inputs, outputs = library_outputs("siglip", model_dir, images, CAPTIONS)
        assert ("attention_mask" in inputs) == (model_dir == str(masked))
        scorer = _scorer(model_dir)
        got = scorer.score(our_pixels(scorer, images), list(CAPTIONS)).cosine
        assert np.abs(got - library_cosines(outputs)).max() <= COSINE_TOLERANCE
        results[model_dir] = got
    assert np.abs(results[siglip_model] - results[str(masked)]).max() > 100 * COSINE_TOLERANCE


def test_truncation_flag_counts_the_tokenizers_own_tokens(family, photos):
    name, model_dir = family
    scorer = _scorer(model_dir)
    context = scorer.max_text_tokens
    captions = [f"{'cat ' * n}{tail}" for n in range(context // 3, context + 2) for tail in ("", "dog")]
    full = [len(ids) for ids in scorer.tokenizer(captions, truncation=False)["input_ids"]]
    want = [length > scorer.max_text_tokens for length in full]
    assert any(want) and not all(want)
    pixels = our_pixels(scorer, [Image.open(photos["chelsea"]).convert("RGB")] * len(captions))
    assert scorer.score(pixels, captions).truncated.tolist() == want


def _varied_captions(context: int) -> list[str]:
    """More captions than one text call takes, of every length from one word to past the
    context, in an order unrelated to their lengths."""
    words = "a red dog , sitting on THE old wooden bench near 3 tall trees".split()
    lengths = [(7 * i) % (context + 12) + 1 for i in range(2 * TEXT_GROUP_ROWS + 37)]
    return [" ".join(words[j % len(words)] for j in range(n)) for n in lengths]


def _text_model_inputs(scorer, captions: list[str]) -> list[dict[str, torch.Tensor]]:
    """The inputs of each text-model call `embed_texts` makes for `captions`."""
    calls = []
    real = scorer.model.get_text_features
    scorer.model.get_text_features = lambda **inputs: calls.append(inputs) or real(**inputs)
    try:
        scorer.embed_texts(captions)
    finally:
        del scorer.model.get_text_features
    return calls


def test_one_tokenisation_gives_the_two_calls_ids_and_flags(family):
    """The ids the model gets and the truncation flags equal the two tokenizer calls they replace:
    one at a token past the context for the flag, one padded and cut at the context for the ids
    (CLIP's rows padded per length group instead of to the batch's longest: same ids and mask up
    to each row's length, padding after)."""
    _, model_dir = family
    scorer = _scorer(model_dir)
    tokenizer, context = scorer.tokenizer, scorer.max_text_tokens
    captions = _varied_captions(context)
    flags = [len(ids) > context for ids in tokenizer(captions, truncation=True, max_length=context + 1)["input_ids"]]
    want = tokenizer(captions, padding=scorer.text_padding, truncation=True, max_length=context, return_tensors="pt")
    assert any(flags) and not all(flags)
    ids, truncated = scorer.token_ids(captions)
    assert truncated.tolist() == flags
    groups = scorer.text_groups(ids)
    calls = _text_model_inputs(scorer, captions)
    assert sorted(row for group in groups for row in group) == list(range(len(captions)))
    one_call = scorer.text_padding == "max_length"
    assert len(calls) == len(groups) == (1 if one_call else -(-len(captions) // TEXT_GROUP_ROWS))
    for group, inputs in zip(groups, calls, strict=True):
        assert set(inputs) == {name for name in ("input_ids", "attention_mask") if name in want}
        for position, row in enumerate(group):
            got_ids = inputs["input_ids"][position]
            if "attention_mask" not in want:  # SigLIP: every row padded to the context, as one call pads it
                assert torch.equal(got_ids, want["input_ids"][row])
                continue
            length = int(want["attention_mask"][row].sum())
            assert torch.equal(got_ids[:length], want["input_ids"][row][:length])
            assert inputs["attention_mask"][position].tolist() == [1] * length + [0] * (len(got_ids) - length)
            assert set(got_ids[length:].tolist()) <= {tokenizer.pad_token_id}


def test_captions_grouped_by_length_embed_as_one_documented_call(tiny_model):
    """CLIP's captions, sorted by length and encoded in several calls, come back in their own order
    with the embeddings one padded call of the library gives (float rounding aside)."""
    scorer = _scorer(tiny_model)
    captions = _varied_captions(scorer.max_text_tokens)
    model, processor = library(tiny_model)
    with torch.inference_mode():
        inputs = processor(text=captions, return_tensors="pt", padding=True, truncation=True)
        want = torch.nn.functional.normalize(model.get_text_features(**inputs).pooler_output, dim=-1).numpy()
    got, _ = scorer.embed_texts(captions)
    assert len(scorer.text_groups(scorer.token_ids(captions)[0])) > 1
    assert np.abs(got - want).max() <= COSINE_TOLERANCE


def test_siglip_pads_every_caption_to_the_context(siglip_model, photos):
    """SigLIP pools the last position, padding included: a caption scores the same alone and
    beside a longer one only because both are padded to the full 64 tokens."""
    scorer = _scorer(siglip_model)
    pixels = our_pixels(scorer, [Image.open(photos["rocket"]).convert("RGB")] * 2)
    alone = scorer.score(pixels[:1], ["a rocket"]).cosine[0]
    beside = scorer.score(pixels, ["a rocket", "a rocket lifting off from a launch pad at dawn"]).cosine[0]
    assert abs(alone - beside) <= COSINE_TOLERANCE


def test_a_scorer_class_refuses_another_familys_checkpoint(siglip_model):
    with pytest.raises(ModelLoadError, match="is a siglip checkpoint, not clip"):
        ClipScorer(ModelConfig(model=siglip_model, device="cpu", dtype="float32"))


def test_siglip_without_sentencepiece_is_one_line_saying_what_to_install(siglip_model):
    """SiglipTokenizer needs the sentencepiece package; without it the model fails to load with a
    line the user can act on (run where the import is blocked, as in an environment without it)."""
    program = (
        "import sys; sys.modules['sentencepiece'] = None\n"
        "from tis_ray.config import ModelConfig\n"
        "from tis_ray.errors import ModelLoadError\n"
        "from tis_ray.scorer import make_scorer\n"
        "try:\n"
        f"    make_scorer(ModelConfig(model={siglip_model!r}, device='cpu', dtype='float32'))\n"
        "except ModelLoadError as exc:\n"
        "    print('ERROR', exc)\n"
    )
    run = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=300)
    [line] = [line for line in run.stdout.splitlines() if line.startswith("ERROR")]
    assert "SentencePiece" in line and "pip install sentencepiece" in line


@pytest.fixture()
def bert_dir(tmp_path):
    """A text-only checkpoint's config, which transformers loads and tis-ray cannot score."""
    BertConfig().save_pretrained(tmp_path / "bert")
    return str(tmp_path / "bert")


def test_unsupported_family_is_one_line_naming_the_supported(bert_dir):
    for load in (load_preprocess_spec, lambda m: make_scorer(ModelConfig(model=m, device="cpu"))):
        with pytest.raises(ModelLoadError) as caught:
            load(bert_dir)
        message = str(caught.value)
        assert "\n" not in message
        assert "'bert'" in message and "CLIP" in message and "SigLIP" in message


def test_unsupported_family_on_the_command_line(bert_dir, tmp_path, capsys):
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("image,caption\nx.jpg,a cat\n")
    assert cli_main(["score", str(pairs), "-o", str(tmp_path / "out.csv"), "--model", bert_dir]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "'bert'" in err and "SigLIP" in err


def test_naflex_siglip2_is_refused_with_its_reason(tmp_path):
    Siglip2Config().save_pretrained(tmp_path / "naflex")
    with pytest.raises(ModelLoadError, match="NaFlex.*fixed-resolution") as caught:
        load_preprocess_spec(str(tmp_path / "naflex"))
    assert "\n" not in str(caught.value)


def test_batch_job_with_siglip_gives_the_librarys_similarity(siglip_model, image_server, photos, local_ray,
                                                             tmp_path):
    """The whole pipeline (real Ray, HTTP on 127.0.0.1) with a SigLIP checkpoint, whole-image decodes."""
    source = tmp_path / "pairs.csv"
    with open(source, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["url", "caption"])
        for name, caption in zip(PHOTOS, CAPTIONS):
            writer.writerow([image_server.url(f"photo/{name}.jpg"), caption])
    out = tmp_path / "scored.csv"
    score_file(str(source), str(out), progress=False,
               model=ModelConfig(model=siglip_model, device="cpu", dtype="float32"),
               fetch=FetchConfig(reduced_decode=False), pipeline=PipelineConfig(batch_size=4))
    table = pacsv.read_csv(out)
    assert table.column("error").null_count == table.num_rows
    _, outputs = library_outputs("siglip", siglip_model, photos_rgb(photos), CAPTIONS)
    want = [round((c + 1) / 2, 4) for c in library_cosines(outputs).tolist()]
    got = table.column("similarity").to_pylist()
    assert np.abs(np.subtract(got, want)).max() <= SCORE_TOLERANCE + ROUNDING_SLACK
