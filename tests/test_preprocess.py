"""resize_and_crop + normalize must reproduce transformers' own image processors.

The reference is the processor saved in the tiny test checkpoint (PIL backend), or
SigLIP's with the released checkpoints' settings, run on the same RGB images; nothing
here re-derives the maths the code under test uses.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor
from transformers.image_utils import PILImageResampling
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

from tis_ray.prepare import bytes_to_pixels
from tis_ray.preprocess import PreprocessSpec, min_decode_side, resize_and_crop
from tis_ray.scorer import normalize

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def processor(tiny_model):
    return AutoImageProcessor.from_pretrained(tiny_model, backend="pil")


def reference(processor, image: Image.Image) -> np.ndarray:
    """(3, H, W) float32 from transformers."""
    return processor(images=[image], return_tensors="np")["pixel_values"][0]


def ours(processor, image: Image.Image) -> np.ndarray:
    spec = PreprocessSpec.from_image_processor(processor)
    crop = resize_and_crop(image, spec)
    assert crop.dtype == np.uint8 and crop.shape == (*spec.output_size, 3)
    out = normalize(torch.from_numpy(np.stack([crop])), spec)
    assert out.dtype == torch.float32 and out.shape == (1, 3, *spec.output_size)
    return out[0].numpy()


def assert_matches(processor, image: Image.Image) -> None:
    expected, actual = reference(processor, image), ours(processor, image)
    assert actual.shape == expected.shape
    assert np.abs(actual - expected).max() <= TOLERANCE


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    """Random pixels: the hardest case for a resize to agree on."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def photo_shape(photos, width: int, height: int) -> Image.Image:
    with Image.open(photos["astronaut"]) as image:
        return image.convert("RGB").resize((width, height), Image.Resampling.LANCZOS)


SHAPES = {
    "portrait": (300, 500),
    "landscape": (500, 300),
    "very_wide": (1000, 50),
    "very_tall": (50, 1000),
    "tiny": (10, 10),
    "exact_crop": (224, 224),
    "odd": (333, 227),
    "one_pixel_short": (225, 223),
}


def test_checkpoint_processor_is_clip_default(processor):
    assert isinstance(processor, CLIPImageProcessorPil)
    spec = PreprocessSpec.from_image_processor(processor)
    assert spec == PreprocessSpec()  # the class defaults are openai/clip-vit-base-patch32's
    assert spec.output_size == (224, 224)


@pytest.mark.parametrize("name", ["astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "retina"])
def test_real_photos_match_transformers(processor, photos, name):
    with Image.open(photos[name]) as image:
        assert_matches(processor, image.convert("RGB"))


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_synthetic_shapes_match_transformers(processor, photos, shape):
    assert_matches(processor, noise(*shape))
    assert_matches(processor, photo_shape(photos, *shape))


def custom(**options) -> CLIPImageProcessorPil:
    return CLIPImageProcessorPil(**options)


CUSTOM = {
    # crop larger than the resize: zero padding around the image
    "pad_after_resize": dict(size={"shortest_edge": 100}, crop_size={"height": 224, "width": 224}),
    "pad_odd": dict(size={"shortest_edge": 99}, crop_size={"height": 161, "width": 150}),
    "no_resize_pads": dict(do_resize=False, crop_size={"height": 64, "width": 48}),
    "height_width_resize": dict(size={"height": 256, "width": 200}, crop_size={"height": 224, "width": 180}),
    "height_width_no_crop": dict(size={"height": 96, "width": 128}, do_center_crop=False),
    "odd_crop": dict(size={"shortest_edge": 230}, crop_size={"height": 223, "width": 171}),
    "bilinear": dict(resample=Image.Resampling.BILINEAR),
    "nearest": dict(resample=Image.Resampling.NEAREST),
    "other_stats": dict(image_mean=[0.5, 0.25, 0.125], image_std=[0.2, 0.4, 0.8]),
    "no_rescale": dict(do_rescale=False),
    "no_normalize": dict(do_normalize=False),
}


@pytest.mark.parametrize("options", CUSTOM.values(), ids=CUSTOM.keys())
@pytest.mark.parametrize("shape", [(10, 10), (300, 120), (120, 300), (1000, 50), (500, 300)])
def test_custom_processors_match_transformers(options, shape):
    assert_matches(custom(**options), noise(*shape, seed=shape[0] * 7 + shape[1]))


# google/siglip-base-patch16-224 and google/siglip2-base-patch16-224's preprocessor_config.json:
# 224x224 without keeping the aspect ratio, no crop, mean = std = 0.5; bicubic for SigLIP,
# bilinear for SigLIP 2. The class defaults are the rest of those files.
SIGLIP = {"siglip": dict(resample=PILImageResampling.BICUBIC), "siglip2": dict(resample=PILImageResampling.BILINEAR)}


@pytest.mark.parametrize("options", SIGLIP.values(), ids=SIGLIP.keys())
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_siglip_processors_match_transformers(options, shape, photos):
    processor = SiglipImageProcessorPil(**options)
    spec = PreprocessSpec.from_image_processor(processor)
    assert spec.resize_to == (224, 224) and spec.crop_size is None and spec.image_mean == (0.5, 0.5, 0.5)
    assert_matches(processor, noise(*shape))
    assert_matches(processor, photo_shape(photos, *shape))


def test_small_image_is_zero_padded_like_transformers():
    processor = custom(do_resize=False, do_normalize=False, do_rescale=False, crop_size={"height": 5, "width": 4})
    spec = PreprocessSpec.from_image_processor(processor)
    image = Image.fromarray(np.full((2, 3, 3), 200, np.uint8), "RGB")
    crop = resize_and_crop(image, spec)
    expected = reference(processor, image).transpose(1, 2, 0)
    assert np.array_equal(crop, expected.astype(np.uint8))
    # (5 - 2) / 2 rounds up above, (4 - 3) / 2 rounds up to the left.
    assert crop[:, :, 0].tolist() == [[0, 0, 0, 0], [0, 0, 0, 0], [0, 200, 200, 200],
                                      [0, 200, 200, 200], [0, 0, 0, 0]]


def test_spec_reads_height_width_size_and_non_default_crop():
    processor = custom(size={"height": 256, "width": 200}, crop_size={"height": 160, "width": 150},
                       resample=Image.Resampling.BILINEAR, image_mean=[0.1, 0.2, 0.3], image_std=[0.4, 0.5, 0.6])
    spec = PreprocessSpec.from_image_processor(processor)
    assert spec.resize_to == (256, 200)
    assert spec.shortest_edge is None
    assert spec.crop_size == (160, 150)
    assert spec.resample == int(Image.Resampling.BILINEAR)
    assert spec.image_mean == pytest.approx((0.1, 0.2, 0.3))
    assert spec.image_std == pytest.approx((0.4, 0.5, 0.6))
    assert spec.output_size == (160, 150)
    assert resize_and_crop(noise(40, 30), spec).shape == (160, 150, 3)


def test_spec_without_crop():
    spec = PreprocessSpec.from_image_processor(custom(size={"height": 96, "width": 128}, do_center_crop=False))
    assert spec.crop_size is None
    assert spec.output_size == (96, 128)
    assert resize_and_crop(noise(500, 300), spec).shape == (96, 128, 3)


def test_spec_without_resize_keeps_the_image_size_before_the_crop():
    spec = PreprocessSpec.from_image_processor(custom(do_resize=False))
    assert spec.shortest_edge is None and spec.resize_to is None
    assert spec.output_size == (224, 224)


def test_shortest_edge_without_crop_has_no_fixed_output_size():
    spec = PreprocessSpec(shortest_edge=224, crop_size=None)
    with pytest.raises(ValueError):
        _ = spec.output_size
    assert resize_and_crop(noise(500, 300), spec).shape == (224, 373, 3)  # int(224 * 500 / 300)


def test_normalize_batches_independently(processor, photos):
    spec = PreprocessSpec.from_image_processor(processor)
    images = [noise(300, 500, seed=1), noise(224, 224, seed=2), photo_shape(photos, 640, 480)]
    batch = normalize(torch.from_numpy(np.stack([resize_and_crop(i, spec) for i in images])), spec).numpy()
    for row, image in zip(batch, images):
        assert np.abs(row - reference(processor, image)).max() <= TOLERANCE


@pytest.mark.parametrize(
    "options",
    [dict(size={"shortest_edge": 224, "longest_edge": 300}),
     dict(size={"shortest_edge": 224, "longest_edge": 300}, do_center_crop=False)],
)
def test_spec_refuses_size_limits_it_would_ignore(options):
    """transformers caps the long side at longest_edge; a spec that dropped it would differ silently."""
    processor = custom(**options)
    assert reference(processor, noise(1000, 400)).shape[1:] in {(120, 300), (224, 224)}
    with pytest.raises(ValueError, match="unsupported"):
        PreprocessSpec.from_image_processor(processor)


def test_spec_refuses_padding_it_would_ignore():
    processor = custom(do_pad=True, pad_size={"height": 300, "width": 300})
    assert reference(processor, noise(500, 300)).shape[1:] == (300, 300)  # transformers pads the crop
    with pytest.raises(ValueError, match="unsupported"):
        PreprocessSpec.from_image_processor(processor)


def test_spec_for_processor_without_normalisation_is_the_identity():
    spec = PreprocessSpec.from_image_processor(custom(do_normalize=False))
    assert spec.image_mean == (0.0, 0.0, 0.0) and spec.image_std == (1.0, 1.0, 1.0)


def test_min_decode_side_is_the_resize_target():
    assert min_decode_side(PreprocessSpec(shortest_edge=224)) == 224
    assert min_decode_side(PreprocessSpec(shortest_edge=None, resize_to=(336, 300))) == 336
    assert min_decode_side(PreprocessSpec(shortest_edge=None, crop_size=(224, 224))) is None


@pytest.mark.parametrize("size", [(2048, 1536), (1536, 2048), (1411, 1411), (4000, 900), (500, 500)])
def test_reduced_decode_gives_nearly_the_pixels_of_a_full_decode(processor, photos, size):
    """The model input from a 1/2..1/8-scale JPEG decode against the full decode of the same file.

    Measured with the decode kept at the model's input size: a mean difference of 0.30-0.69
    (of 255) on these sizes, at twice it 0.14-0.46."""
    spec = PreprocessSpec.from_image_processor(processor)
    with Image.open(photos["retina"]) as photo:
        buffer = io.BytesIO()
        photo.convert("RGB").resize(size, Image.Resampling.BICUBIC).save(buffer, "JPEG", quality=90)
    full = bytes_to_pixels(buffer.getvalue(), spec, 10**9, reduced_decode=False).astype(np.int16)
    reduced = bytes_to_pixels(buffer.getvalue(), spec, 10**9, reduced_decode=True).astype(np.int16)
    assert full.shape == reduced.shape == (*spec.output_size, 3)
    difference = np.abs(full - reduced)
    assert difference.mean() < 1.0
    assert (difference > 8).mean() < 0.01  # a few pixels on sharp edges (the retina's rim) differ visibly
