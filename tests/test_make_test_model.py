"""Tests for scripts/make_test_model.py, the offline random-weight CLIP and SigLIP builder."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import (
    AutoImageProcessor,
    AutoModel,
    AutoProcessor,
    AutoTokenizer,
    CLIPModel,
    CLIPProcessor,
    SiglipModel,
)

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "make_test_model.py"

# Ids from OpenAI's clip.tokenize (identical to openai/clip-vit-base-patch32's tokenizer).
OPENAI_IDS = {
    "a photo of a cat": [49406, 320, 1125, 539, 320, 2368, 49407],
    "a photo of a dog": [49406, 320, 1125, 539, 320, 1929, 49407],
    "a diagram": [49406, 320, 22697, 49407],
    "hello world": [49406, 3306, 1002, 49407],
}


def load_script():
    """Import the script as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("make_test_model", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_in_parallel(builds: dict, timeout: float) -> dict:
    """Run the script once per ``key: (folder, arch, seed)`` at the same time; each run's stdout by key."""
    procs = {key: subprocess.Popen([sys.executable, str(SCRIPT), str(folder), "--arch", arch, "--seed", str(seed)],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for key, (folder, arch, seed) in builds.items()}
    outputs = {}
    for key, proc in procs.items():
        outputs[key], err = proc.communicate(timeout=timeout)
        assert proc.returncode == 0, err
    return outputs


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    """Three tiny builds (seed 0 twice, seed 1 once), run in parallel to keep the suite fast."""
    root = tmp_path_factory.mktemp("clip")
    seeds = {"a": 0, "b": 0, "c": 1}
    outputs = build_in_parallel({name: (root / name, "tiny", seed) for name, seed in seeds.items()}, 120)
    for name, out in outputs.items():
        assert f"wrote tiny CLIP (seed {seeds[name]}" in out
    return {name: root / name for name in seeds}


@pytest.fixture(scope="module")
def model_dir(builds):
    return builds["a"]


def test_writes_hf_files_and_readme(model_dir):
    for name in ("config.json", "model.safetensors", "tokenizer.json", "vocab.json", "merges.txt",
                 "preprocessor_config.json", "processor_config.json"):
        assert (model_dir / name).is_file(), name
    assert (model_dir / "merges.txt").read_text(encoding="utf-8").startswith("#version: 0.2\n")
    readme = (model_dir / "README.md").read_text(encoding="utf-8")
    assert "RANDOM" in readme and "--arch tiny --seed 0" in readme


def test_tokenizer_matches_openai(model_dir):
    tokenizers = (AutoTokenizer.from_pretrained(model_dir), CLIPProcessor.from_pretrained(model_dir).tokenizer)
    for tokenizer in tokenizers:
        assert len(tokenizer) == 49408
        assert tokenizer.model_max_length == 77
        for caption, ids in OPENAI_IDS.items():
            assert tokenizer(caption)["input_ids"] == ids, caption
        batch = tokenizer(["a cat", "a photo of a cat"], padding=True)["input_ids"]
        assert batch[0] == [49406, 320, 2368, 49407, 49407, 49407, 49407]
        long_ids = tokenizer("cat " * 100, truncation=True)["input_ids"]
        assert len(long_ids) == 77 and long_ids[-1] == 49407


def test_features_from_processor_output(model_dir):
    model = CLIPModel.from_pretrained(model_dir).eval()
    assert model.dtype == torch.float32
    assert type(AutoImageProcessor.from_pretrained(model_dir)).__name__ == "CLIPImageProcessorPil"
    processor = CLIPProcessor.from_pretrained(model_dir)
    images = [Image.new("RGB", (320, 240), (200, 30, 30)), Image.new("L", (100, 180), 128)]
    inputs = processor(text=list(OPENAI_IDS), images=images, padding=True, return_tensors="pt")
    assert inputs["pixel_values"].shape == (2, 3, 224, 224)
    with torch.no_grad():
        # transformers 5 returns a ModelOutput here; the projected features are pooler_output.
        image = model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output
        text = model.get_text_features(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]
        ).pooler_output
    assert image.shape == (2, 16) and text.shape == (len(OPENAI_IDS), 16)
    assert torch.isfinite(image).all() and torch.isfinite(text).all()


def test_text_pooling_ignores_padding(model_dir):
    """Pad == EOS, so pooling must take the first EOS; padding must not change the features."""
    model = CLIPModel.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    with torch.no_grad():
        alone = model.get_text_features(**tokenizer(["a cat"], return_tensors="pt")).pooler_output
        padded = model.get_text_features(
            **tokenizer(["a cat", "a photo of a cat"], padding=True, return_tensors="pt")
        ).pooler_output
    torch.testing.assert_close(padded[0], alone[0])
    # A pooling position that ignores the EOS (e.g. always BOS) would make captions indistinguishable.
    assert not torch.allclose(padded[0], padded[1])


def test_same_seed_same_weights_other_seed_differs(builds):
    a, b, c = (load_file(builds[name] / "model.safetensors") for name in ("a", "b", "c"))
    assert a.keys() == b.keys() == c.keys()
    assert all(t.dtype == torch.float32 for t in a.values())
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_vit_b_32_config_matches_openai():
    config = load_script().build_config("vit-b-32")
    text, vision = config.text_config, config.vision_config
    assert (text.hidden_size, text.intermediate_size, text.num_hidden_layers, text.num_attention_heads) == (
        512, 2048, 12, 8)
    assert (text.max_position_embeddings, text.vocab_size, text.hidden_act) == (77, 49408, "quick_gelu")
    assert (text.bos_token_id, text.eos_token_id, text.pad_token_id) == (49406, 49407, 49407)
    assert (
        vision.hidden_size, vision.intermediate_size, vision.num_hidden_layers, vision.num_attention_heads
    ) == (768, 3072, 12, 12)
    assert (vision.image_size, vision.patch_size, vision.hidden_act) == (224, 32, "quick_gelu")
    assert config.projection_dim == 512 and config.logit_scale_init_value == pytest.approx(2.6592)
    with torch.device("meta"):  # shapes only, no memory or init time
        model = CLIPModel(config)
    # OpenAI's published parameter count for ViT-B/32.
    assert sum(p.numel() for p in model.parameters()) == 151_277_313


# --- SigLIP and SigLIP 2 (fixed resolution) ------------------------------------------------

SIGLIP_ARCHS = {"siglip": "siglip-tiny", "siglip2": "siglip2-tiny"}
SIGLIP_CAPTIONS = ["a photo of a cat", "A Photo, of a CAT!", "a rocket lifting off from a launch pad at dawn"]


@pytest.fixture(scope="module")
def siglip_builds(tmp_path_factory):
    """Each SigLIP arch built twice with seed 0, in parallel: {(family, "a"|"b"): folder}."""
    root = tmp_path_factory.mktemp("siglip")
    dirs = {(family, copy): root / f"{family}-{copy}" for family in SIGLIP_ARCHS for copy in "ab"}
    outputs = build_in_parallel({key: (d, SIGLIP_ARCHS[key[0]], 0) for key, d in dirs.items()}, 300)
    for key, out in outputs.items():
        assert f"wrote {SIGLIP_ARCHS[key[0]]} SigLIP" in out
    return dirs


@pytest.fixture(params=sorted(SIGLIP_ARCHS))
def siglip_dir(request, siglip_builds) -> tuple[str, Path]:
    return request.param, siglip_builds[(request.param, "a")]


def test_siglip_writes_the_released_layout(siglip_dir):
    family, model_dir = siglip_dir
    tokenizer_file = "spiece.model" if family == "siglip" else "tokenizer.json"
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "processor_config.json",
                 "tokenizer_config.json", tokenizer_file):
        assert (model_dir / name).is_file(), name
    config = json.loads((model_dir / "config.json").read_text())
    assert config["model_type"] == "siglip"  # SigLIP 2's fixed-resolution checkpoints are "siglip" too
    readme = (model_dir / "README.md").read_text(encoding="utf-8")
    assert "RANDOM" in readme and f"--arch {SIGLIP_ARCHS[family]} --seed 0" in readme


def test_siglip_image_processor_has_the_released_settings(siglip_dir):
    family, model_dir = siglip_dir
    saved = json.loads((model_dir / "preprocessor_config.json").read_text())
    assert saved["image_processor_type"] == "SiglipImageProcessor"
    assert saved["size"] == {"height": 224, "width": 224} and not saved.get("do_center_crop")
    assert saved["image_mean"] == saved["image_std"] == [0.5, 0.5, 0.5]
    assert saved["rescale_factor"] == pytest.approx(1 / 255)
    # google/siglip-base-patch16-224: 3 (bicubic); google/siglip2-base-patch16-224: 2 (bilinear).
    assert saved["resample"] == {"siglip": 3, "siglip2": 2}[family]


def test_siglip_loads_and_runs_as_documented(siglip_dir):
    """AutoModel + AutoProcessor and the model cards' call, padding="max_length", max_length=64."""
    family, model_dir = siglip_dir
    model = AutoModel.from_pretrained(model_dir).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    assert type(model).__name__ == "SiglipModel" and model.dtype == torch.float32
    assert type(processor).__name__ == "SiglipProcessor"
    assert type(processor.tokenizer).__name__ == {"siglip": "SiglipTokenizer", "siglip2": "GemmaTokenizer"}[family]
    images = [Image.new("RGB", (320, 240), (200, 30, 30)), Image.new("L", (100, 180), 128)]
    inputs = processor(text=SIGLIP_CAPTIONS, images=images, padding="max_length", max_length=64,
                       return_tensors="pt")
    # As released (transformers' conversion script): no attention mask, the model attends to the padding.
    assert set(inputs) == {"input_ids", "pixel_values"}
    assert inputs["input_ids"].shape == (3, 64) and inputs["pixel_values"].shape == (2, 3, 224, 224)
    with torch.no_grad():
        outputs = model(**inputs)
    assert outputs.logits_per_image.shape == (2, 3) and torch.isfinite(outputs.logits_per_image).all()
    # The pair head is set, not left at transformers' zero init: logits = cos * 10 - 1.
    cosine = outputs.image_embeds @ outputs.text_embeds.T
    torch.testing.assert_close(outputs.logits_per_image, cosine * 10 - 1)


def test_siglip_tokenizer_canonicalises_and_pads_with_eos(siglip_builds):
    tokenizer = AutoTokenizer.from_pretrained(siglip_builds[("siglip", "a")])
    plain, shouted, long = (tokenizer(c)["input_ids"] for c in SIGLIP_CAPTIONS)
    assert plain == shouted  # lower case, punctuation removed, as big_vision's SigLIP text preprocessing
    assert plain[-1] == tokenizer.eos_token_id == 1 and tokenizer.eos_token_id not in plain[:-1]
    assert tokenizer.convert_ids_to_tokens(tokenizer("of the")["input_ids"]) == ["▁of", "▁the", "</s>"]  # words
    padded = tokenizer(["a cat"], padding="max_length", max_length=64)["input_ids"][0]
    assert len(padded) == 64 and padded[len(tokenizer("a cat")["input_ids"]):] == [1] * (64 - 3)
    assert tokenizer.model_max_length == 64
    cut = tokenizer("cat " * 100, truncation=True)["input_ids"]
    assert len(cut) == 64 and cut[-1] == 1
    assert len(long) < 64


def test_gemma_tokenizer_is_siglip2s_kind(siglip_builds):
    tokenizer = AutoTokenizer.from_pretrained(siglip_builds[("siglip2", "a")])
    ids = tokenizer("a photo of a cat")["input_ids"]
    assert ids[-1] == tokenizer.eos_token_id == 1 and tokenizer.bos_token_id not in ids  # no BOS, EOS appended
    assert tokenizer("A cat")["input_ids"] != tokenizer("a cat")["input_ids"]  # Gemma keeps case
    padded = tokenizer(["a cat"], padding="max_length", max_length=64)["input_ids"][0]
    n = len(tokenizer("a cat")["input_ids"])
    assert padded[:n] == tokenizer("a cat")["input_ids"] and padded[n:] == [0] * (64 - n)  # right, with <pad>
    text = "héllo wörld 😀, 42"
    assert tokenizer.decode(tokenizer(text)["input_ids"], skip_special_tokens=True) == text  # byte fallback
    assert tokenizer.unk_token_id not in tokenizer(text)["input_ids"]


def test_siglip_same_seed_same_build(siglip_builds):
    for family in SIGLIP_ARCHS:
        a, b = siglip_builds[(family, "a")], siglip_builds[(family, "b")]
        wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
        tokenizer_file = "spiece.model" if family == "siglip" else "tokenizer.json"
        assert (a / tokenizer_file).read_bytes() == (b / tokenizer_file).read_bytes()


@pytest.mark.parametrize("family, vocab_size, millions", [("siglip", 32_000, 203), ("siglip2", 256_000, 375)])
def test_siglip_base_configs_match_the_released(siglip_builds, family, vocab_size, millions):
    """`--arch siglip` / `siglip2` have google/siglip(2)-base-patch16-224's shapes."""
    tokenizer = AutoTokenizer.from_pretrained(siglip_builds[(family, "a")])
    config = load_script().build_siglip_config(family, tokenizer)
    text, vision = config.text_config, config.vision_config
    for tower in (text, vision):
        assert (tower.hidden_size, tower.intermediate_size, tower.num_hidden_layers, tower.num_attention_heads) == (
            768, 3072, 12, 12)
    assert (text.vocab_size, text.max_position_embeddings) == (vocab_size, 64)
    assert (vision.image_size, vision.patch_size) == (224, 16)
    with torch.device("meta"):
        model = SiglipModel(config)
    # The model cards give 203M (SigLIP) and 375M (SigLIP 2, its 256k-token Gemma vocabulary) parameters.
    assert round(sum(p.numel() for p in model.parameters()) / 1e6) == millions
