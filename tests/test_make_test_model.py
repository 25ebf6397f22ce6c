"""Tests for scripts/make_test_model.py, the offline random-weight CLIP builder."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel, CLIPProcessor

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


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    """Three tiny builds (seed 0 twice, seed 1 once), run in parallel to keep the suite fast."""
    root = tmp_path_factory.mktemp("clip")
    dirs = {name: root / name for name in ("a", "b", "c")}
    seeds = {"a": 0, "b": 0, "c": 1}
    procs = {
        name: subprocess.Popen(
            [sys.executable, str(SCRIPT), str(d), "--arch", "tiny", "--seed", str(seeds[name])],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for name, d in dirs.items()
    }
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert f"wrote tiny CLIP (seed {seeds[name]}" in out
    return dirs


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
