"""decode_image: bytes of many real-world encodings to RGB, or a RowError of the right kind.

Every input is built here with Pillow from the real photos in examples/images; expected
pixels come from the original photo or from numpy, not from the code under test.
"""

from __future__ import annotations

import io
import platform
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import EpsImagePlugin, Image, ImageFile, ImageOps
from transformers.image_transforms import convert_to_rgb

from tis_ray import decode, errors
from tis_ray.decode import decode_image, release_decode_memory, to_rgb
from tis_ray.errors import RowError

LIMIT = 89_478_485  # the pipeline's default max_pixels
PHOTOS_DIR = Path(__file__).resolve().parent.parent / "examples" / "images"


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def rgb(path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def mean_abs_diff(a: Image.Image | np.ndarray, b: Image.Image | np.ndarray) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape
    return float(np.abs(a - b).mean())


def decode_ok(data: bytes, max_pixels: int = LIMIT) -> Image.Image:
    image = decode_image(data, max_pixels)
    assert isinstance(image, Image.Image)
    assert image.mode == "RGB"
    return image


def decode_fails(data: bytes, kind: str, max_pixels: int = LIMIT) -> RowError:
    with pytest.raises(RowError) as caught:
        decode_image(data, max_pixels)
    assert caught.value.kind == kind, str(caught.value)
    return caught.value


def white_composite(color: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """What a viewer shows for `color` with `alpha` over white (float, 0..255)."""
    a = alpha.astype(np.float64)[..., None] / 255.0
    return color.astype(np.float64) * a + 255.0 * (1.0 - a)


@pytest.fixture(scope="module")
def chelsea(photos) -> Image.Image:
    return rgb(photos["chelsea"])  # 451x300, landscape


# ---------------------------------------------------------------- formats that must decode


@pytest.mark.parametrize("name", ["astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "retina"])
def test_real_photos_decode_to_their_own_pixels(photos, name):
    data = photos[name].read_bytes()
    image = decode_ok(data)
    assert np.array_equal(pixels(image), pixels(rgb(photos[name])))


def test_cmyk_jpeg_is_converted_to_rgb_close_to_the_original(chelsea):
    data = encode(chelsea.convert("CMYK"), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"  # the input really is CMYK
    image = decode_ok(data)
    assert image.size == chelsea.size
    assert mean_abs_diff(image, chelsea) < 2.0
    # An inverted CMYK read (a classic Adobe-marker mistake) would be far off.
    assert mean_abs_diff(ImageOps.invert(image), chelsea) > 50


def test_palette_png_with_transparent_index_becomes_white(chelsea):
    small = chelsea.resize((120, 80))
    palette_image = small.quantize(colors=255)  # indices 0..254
    palette = palette_image.getpalette()
    palette += [0] * (768 - len(palette))
    palette[255 * 3 : 256 * 3] = [0, 0, 0]  # index 255 is black *and* fully transparent
    palette_image.putpalette(palette)
    palette_image.paste(255, (10, 20, 60, 50))
    data = encode(palette_image, "PNG", transparency=255)
    opened = Image.open(io.BytesIO(data))
    assert opened.mode == "P" and opened.info.get("transparency") == 255

    out = pixels(decode_ok(data))
    hole = np.zeros(out.shape[:2], dtype=bool)
    hole[20:50, 10:60] = True
    assert (out[hole] == 255).all()  # white, not the palette's black
    assert np.array_equal(out[~hole], pixels(palette_image.convert("RGB"))[~hole])
    assert np.array_equal(out, pixels(Image.fromarray(convert_to_rgb(opened, return_numpy=True))))


def test_palette_png_with_partial_alpha_is_composited_on_white():
    palette_image = Image.new("P", (4, 1))
    palette_image.putpalette([200, 0, 0, 0, 100, 0, 0, 0, 50] + [0] * (768 - 9))
    palette_image.putdata([0, 1, 2, 0])
    data = encode(palette_image, "PNG", transparency=bytes([255, 128, 0]))
    out = pixels(decode_ok(data))[0]
    expected = white_composite(np.array([[200, 0, 0], [0, 100, 0], [0, 0, 50], [200, 0, 0]]),
                               np.array([255, 128, 0, 255]))
    assert np.abs(out - expected).max() <= 1


def test_rgb_png_with_trns_colour_key_becomes_white():
    image = Image.new("RGB", (20, 10), (10, 200, 30))
    image.paste((0, 0, 0), (0, 0, 10, 10))  # left half is the transparent colour
    data = encode(image, "PNG", transparency=(0, 0, 0))
    assert Image.open(io.BytesIO(data)).info.get("transparency") == (0, 0, 0)
    out = pixels(decode_ok(data))
    assert (out[:, :10] == 255).all()
    assert (out[:, 10:] == (10, 200, 30)).all()
    expected = convert_to_rgb(Image.open(io.BytesIO(data)), return_numpy=True)
    assert np.array_equal(out, expected)


def test_rgba_png_is_composited_on_white(chelsea):
    color = np.asarray(chelsea)
    h, w = color.shape[:2]
    alpha = np.tile(np.linspace(0, 255, w).round().astype(np.uint8), (h, 1))  # clear -> opaque
    rgba = Image.fromarray(np.dstack([color, alpha]), "RGBA")
    out = pixels(decode_ok(encode(rgba, "PNG")))
    assert np.abs(out - white_composite(color, alpha)).max() <= 1
    assert (out[:, 0] == 255).all()  # fully transparent column
    assert np.array_equal(out[:, -1], color[:, -1])  # fully opaque column
    assert np.array_equal(out, convert_to_rgb(rgba, return_numpy=True))


def test_la_png_is_composited_on_white(chelsea):
    gray = np.asarray(chelsea.convert("L"))
    h, w = gray.shape
    alpha = np.tile(np.linspace(255, 0, h).round().astype(np.uint8)[:, None], (1, w))
    la = Image.fromarray(np.dstack([gray, alpha]), "LA")
    data = encode(la, "PNG")
    assert Image.open(io.BytesIO(data)).mode == "LA"
    out = pixels(decode_ok(data))
    expected = white_composite(np.repeat(gray[..., None], 3, axis=2), alpha)
    assert np.abs(out - expected).max() <= 1


def test_grayscale_l_png_repeats_the_channel(chelsea):
    gray = chelsea.convert("L")
    out = pixels(decode_ok(encode(gray, "PNG")))
    g = np.asarray(gray)
    for channel in range(3):
        assert np.array_equal(out[..., channel], g)


def with_associated_alpha(tiff: bytes) -> bytes:
    """The same little-endian TIFF with its alpha marked premultiplied (ExtraSamples 2 -> 1),
    as some scanners and compositors write it; Pillow's TIFF writer only writes the plain kind."""
    unassociated = struct.pack("<HHIH", 338, 3, 1, 2)  # tag 338 ExtraSamples, SHORT, 1 value: 2
    assert tiff.count(unassociated) == 1
    return tiff.replace(unassociated, struct.pack("<HHIH", 338, 3, 1, 1))


def premultiplied_over_white(premultiplied: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Premultiplied colour over white: the colour already carries its alpha, white adds 255 - alpha."""
    return premultiplied.astype(np.float64) + (255.0 - alpha.astype(np.float64))


def test_premultiplied_grey_tiff_is_composited_on_white():
    grey = np.array([[0, 50, 100, 200]], dtype=np.uint8)  # premultiplied: never above its alpha
    alpha = np.array([[0, 128, 255, 255]], dtype=np.uint8)
    data = with_associated_alpha(encode(Image.fromarray(np.dstack([grey, alpha]), "LA"), "TIFF"))
    assert Image.open(io.BytesIO(data)).mode == "La"
    out = pixels(decode_ok(data))
    expected = premultiplied_over_white(grey, alpha)[0]  # 255, 177, 100, 200
    for channel in range(3):
        assert np.abs(out[0, :, channel] - expected).max() <= 1


def test_premultiplied_rgb_is_composited_on_white():
    # Pillow opens a premultiplied RGB TIFF as RGBA already; an "RGBa" image reaches to_rgb from Pillow code
    color = np.array([[[0, 0, 0], [50, 25, 10], [100, 50, 20]]], dtype=np.uint8)
    alpha = np.array([[0, 128, 255]], dtype=np.uint8)
    out = pixels(to_rgb(Image.fromarray(np.dstack([color, alpha]), "RGBa")))
    assert np.abs(out - premultiplied_over_white(color, alpha[..., None])).max() <= 1


def test_palette_with_alpha_tiff_is_composited_on_white():
    image = Image.new("PA", (3, 1))
    image.putpalette([200, 0, 0, 0, 100, 0] + [0] * 762)
    image.putdata([(0, 0), (1, 128), (0, 255)])
    data = encode(image, "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "PA"
    out = pixels(decode_ok(data))[0]
    expected = white_composite(np.array([[200, 0, 0], [0, 100, 0], [200, 0, 0]]), np.array([0, 128, 255]))
    assert np.abs(out - expected).max() <= 1


def test_an_rgb_image_is_returned_as_it_is_not_copied(chelsea):
    assert to_rgb(chelsea) is chelsea  # one full-size buffer fewer per decode


def test_an_rgba_image_is_composited_without_a_copy_of_itself(chelsea, monkeypatch):
    conversions = []
    real_convert = Image.Image.convert

    def recorded(self, mode=None, *args, **kwargs):
        conversions.append((self.mode, mode))
        return real_convert(self, mode, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "convert", recorded)
    decode_ok(encode(chelsea.convert("RGBA"), "PNG"))
    assert ("RGBA", "RGBA") not in conversions  # one full-size buffer fewer per decode
    assert conversions[-1] == ("RGBA", "RGB")  # the composite, to RGB


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16_bit_grayscale_is_scaled_to_8_bit_not_clipped(chelsea, fmt):
    gray = np.asarray(chelsea.convert("L"))
    # The 8-bit value in the high byte plus noise in the low byte, as a real 16-bit scan has.
    low = np.random.default_rng(0).integers(0, 256, gray.shape, dtype=np.uint16)
    deep = gray.astype(np.uint16) * 256 + low
    data = encode(Image.fromarray(deep), fmt)
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    out = pixels(decode_ok(data))
    assert out.mean() < 200  # clipping would make almost everything 255
    expected = np.round(deep.astype(np.float64) * 255 / 65535)
    for channel in range(3):
        assert np.abs(out[..., channel] - expected).max() <= 1
        assert np.abs(out[..., channel] - gray).max() <= 1  # close to the 8-bit original


def test_16_bit_grayscale_full_range_maps_to_full_8_bit_range():
    ramp = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    out = pixels(decode_ok(encode(Image.fromarray(ramp), "PNG")))
    assert out[0, :, 0].tolist() == [0, 1, 128, 255]


def test_16_bit_scaling_divides_by_65535_not_65536():
    # 51529 = 257 x 200.502: 8-bit 201 (a 65536 divisor would give 200.4985, so 200)
    out = pixels(decode_ok(encode(Image.fromarray(np.array([[0, 51529, 65535]], dtype=np.uint16)), "PNG")))
    assert out[0, :, 0].tolist() == [0, 201, 255]


@pytest.mark.parametrize(("values", "expected"), [
    ([0, 1000, 128_000, 255_000], [0, 1, 128, 255]),  # above 16 bits: scaled by the image's own top
    ([0, 51529, 65536], [0, 200, 255]),  # just above: 51529 x 255 / 65536 = 200.4985
    ([-1000, 0, 65535], [0, 0, 255]),  # negative values are black, not wrapped around
])
def test_32_bit_integer_tiff_is_scaled_to_8_bit(values, expected):
    data = encode(Image.fromarray(np.array([values], dtype=np.int32), "I"), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "I"
    assert pixels(decode_ok(data))[0, :, 0].tolist() == expected


def test_float_tiff_keeps_values_in_the_8_bit_range_and_clips_the_rest():
    values = np.array([[-10.0, 0.0, 1.0, 100.0, 255.0, 300.0]], dtype=np.float32)
    data = encode(Image.fromarray(values, "F"), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "F"
    out = pixels(decode_ok(data))
    for channel in range(3):
        assert out[0, :, channel].tolist() == [0, 0, 1, 100, 255, 255]


@pytest.mark.parametrize(
    ("name", "orientation", "stored_as"),
    [
        # Orientation 6: "rotate 90° clockwise to display", so the file holds the scene
        # turned 90° counter-clockwise (PIL's ROTATE_90). Orientation 8 is the mirror case.
        ("chelsea", 6, Image.Transpose.ROTATE_90),
        ("coffee", 8, Image.Transpose.ROTATE_270),
        ("astronaut", 6, Image.Transpose.ROTATE_90),  # square: only the pixels can tell
    ],
)
def test_exif_orientation_is_applied(photos, name, orientation, stored_as):
    original = rgb(photos[name])
    stored = original.transpose(stored_as)
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(stored, "JPEG", quality=95, exif=exif.tobytes())
    assert Image.open(io.BytesIO(data)).getexif().get(0x0112) == orientation

    image = decode_ok(data)
    assert image.size == (stored.height, stored.width) == original.size
    assert mean_abs_diff(image, original) < 3.0
    # The same check must fail for the opposite rotation, or it proves nothing.
    assert mean_abs_diff(image.transpose(Image.Transpose.ROTATE_180), original) > 20


def test_animated_gif_uses_the_first_frame(chelsea):
    first, second = chelsea, ImageOps.invert(chelsea)
    data = encode(first, "GIF", save_all=True, append_images=[second], duration=100, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 2
    image = decode_ok(data)
    assert image.size == chelsea.size
    assert mean_abs_diff(image, first) < 12  # GIF is 256 colours: close, not equal
    assert mean_abs_diff(image, second) > 60


def test_lossy_webp(chelsea):
    image = decode_ok(encode(chelsea, "WEBP", quality=90))
    assert image.size == chelsea.size
    assert mean_abs_diff(image, chelsea) < 4


def test_lossless_webp_with_alpha(chelsea):
    color = np.asarray(chelsea)
    alpha = np.full(color.shape[:2], 255, np.uint8)
    alpha[:, :100] = 0
    data = encode(Image.fromarray(np.dstack([color, alpha]), "RGBA"), "WEBP", lossless=True)
    out = pixels(decode_ok(data))
    assert (out[:, :100] == 255).all()
    assert np.array_equal(out[:, 100:], color[:, 100:])


@pytest.mark.parametrize("fmt", ["BMP", "TIFF", "PNG"])
def test_lossless_formats_round_trip_exactly(chelsea, fmt):
    assert np.array_equal(pixels(decode_ok(encode(chelsea, fmt))), pixels(chelsea))


def test_one_pixel_image():
    out = decode_ok(encode(Image.new("RGB", (1, 1), (12, 34, 56)), "PNG"))
    assert out.size == (1, 1)
    assert out.getpixel((0, 0)) == (12, 34, 56)


def test_very_wide_image():
    x = np.arange(10_000)
    y = np.arange(50)
    array = np.stack(np.broadcast_arrays(x[None, :] % 256, y[:, None] * 5, (x[None, :] // 40) % 256), axis=-1)
    array = array.astype(np.uint8)
    out = decode_ok(encode(Image.fromarray(array), "PNG"))
    assert out.size == (10_000, 50)
    assert np.array_equal(np.asarray(out), array)


# ---------------------------------------------------------------- decompression bombs


def png_chunk(tag: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))


def bilevel_png(side: int) -> bytes:
    """A valid, all-black, 1-bit side x side PNG: a few kB on disk, side² pixels in memory."""
    row = b"\0" * (1 + (side + 7) // 8)  # filter byte + packed bits
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


@pytest.fixture
def no_decoding(monkeypatch):
    """Make any pixel decode (and its allocation) fail loudly: a bomb must be refused first."""

    def refuse(self, *args, **kwargs):
        raise AssertionError(f"{self.format} {self.size} was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)
    monkeypatch.setattr(ImageFile.ImageFile, "load_prepare", refuse)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # decode.py silences it too
@pytest.mark.parametrize("side", [20_000, 10_000])  # over Pillow's hard limit / over only its warning limit
def test_decompression_bomb_is_refused_before_decoding(side, no_decoding, monkeypatch):
    data = bilevel_png(side)
    assert len(data) < 200_000
    with monkeypatch.context() as unlimited:  # the file really is a side x side PNG
        unlimited.setattr(Image, "MAX_IMAGE_PIXELS", None)
        assert Image.open(io.BytesIO(data)).size == (side, side)
    decode_fails(data, errors.DECOMPRESSION_BOMB)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_each_bomb_refusal_says_how_many_pixels(no_decoding):
    over_pillow = decode_fails(bilevel_png(20_000), errors.DECOMPRESSION_BOMB)
    assert "(400000000 pixels)" in str(over_pillow)  # Pillow's own refusal, kept as the detail
    ours = decode_fails(bilevel_png(10_000), errors.DECOMPRESSION_BOMB)
    assert str(ours) == "decompression_bomb: 10000x10000 is over the limit of 89478485 pixels"


def test_small_max_pixels_refuses_an_ordinary_photo(chelsea, no_decoding):
    data = encode(chelsea, "JPEG")
    error = decode_fails(data, errors.DECOMPRESSION_BOMB, max_pixels=10_000)
    assert "451x300" in error.detail


def test_max_pixels_is_inclusive(chelsea):
    data = encode(chelsea, "PNG")
    assert decode_ok(data, max_pixels=451 * 300).size == (451, 300)
    decode_fails(data, errors.DECOMPRESSION_BOMB, max_pixels=451 * 300 - 1)


def test_small_max_pixels_refuses_a_bomb_that_pillow_would_allow(no_decoding):
    decode_fails(bilevel_png(2_000), errors.DECOMPRESSION_BOMB, max_pixels=1_000_000)


# ---------------------------------------------------------------- things that are not images


@pytest.mark.parametrize("name", ["astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "retina"])
def test_truncated_jpeg_is_a_decode_error(photos, name):
    data = photos[name].read_bytes()
    decode_fails(data[: len(data) // 2], errors.DECODE_ERROR)


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow's TIFF reader warns about the corrupt bytes
@pytest.mark.parametrize(
    ("fmt", "options"),
    [("JPEG", {}), ("JPEG", {"progressive": True}), ("PNG", {}), ("GIF", {}), ("WEBP", {}), ("BMP", {}),
     ("TIFF", {})],
)
def test_every_short_prefix_is_a_decode_error(chelsea, fmt, options):
    """A download cut off inside or just after the header: a row error, never another exception."""
    data = encode(chelsea, fmt, **options)
    for cut in range(0, min(400, len(data) // 2)):
        try:
            decode_image(data[:cut], LIMIT)
        except RowError as error:
            assert error.kind == errors.DECODE_ERROR, (cut, str(error))
        else:
            pytest.fail(f"{fmt} cut at {cut} bytes decoded")


def test_not_an_image_example_file():
    decode_fails((PHOTOS_DIR / "not_an_image.jpg").read_bytes(), errors.DECODE_ERROR)


def test_html_is_a_decode_error():
    error = decode_fails(b"<!DOCTYPE html><html><body>not an image</body></html>", errors.DECODE_ERROR)
    assert "HTML" in error.detail


def test_pdf_is_a_decode_error():
    pdf = (b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n"
           b"2 0 obj << /Type /Pages /Kids [] /Count 0 >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n")
    error = decode_fails(pdf, errors.DECODE_ERROR)
    assert "PDF" in error.detail


def test_empty_bytes_are_a_decode_error():
    error = decode_fails(b"", errors.DECODE_ERROR)
    assert "empty" in error.detail


EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\n%%EndComments\n"
       b"0 0 moveto 16 16 lineto stroke\nshowpage\n%%EOF\n")


@pytest.mark.parametrize(("body", "error"), [
    (b"<!DOCTYPE html><html><body>not an image</body></html>", "decode_error: not a supported image (HTML)"),
    (b"\r\n  <HTML><BODY>an error page</BODY></HTML>", "decode_error: not a supported image (HTML)"),
    (EPS, "decode_error: not a supported image (PostScript)"),
    (b"%PDF-1.4\n%%EOF\n", "decode_error: not a supported image (PDF)"),
    (b"", "decode_error: not a supported image (empty body)"),
    (b"hello, world", "decode_error: not a supported image (12 bytes of unknown type)"),
])
def test_each_body_that_is_not_an_image_says_what_it_looks_like(body, error):
    assert str(decode_fails(body, errors.DECODE_ERROR)) == error


def test_a_header_cut_short_and_a_body_cut_short_say_which(chelsea):
    png = encode(chelsea, "PNG")
    # 16 bytes: the signature, and the IHDR chunk's length and tag without its body
    header = str(decode_fails(png[:16], errors.DECODE_ERROR))
    assert header.startswith("decode_error: corrupt image header: ") and len(header) > 36
    body = str(decode_fails(png[: len(png) // 2], errors.DECODE_ERROR))
    assert body.startswith("decode_error: corrupt or truncated PNG image: ") and len(body) > 46


def test_eps_is_refused_without_being_parsed(monkeypatch):
    assert Image.open(io.BytesIO(EPS)).format == "EPS"  # Pillow alone would take it

    def parsed(self, *args, **kwargs):
        raise AssertionError("the EPS parser ran")

    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", parsed)
    error = decode_fails(EPS, errors.DECODE_ERROR)
    assert "PostScript" in error.detail


@pytest.mark.parametrize(("fmt", "mode"), [("PPM", "RGB"), ("TGA", "RGB"), ("PCX", "RGB"), ("ICO", "RGBA"),
                                           ("SGI", "RGB"), ("IM", "RGB")])
def test_formats_pillow_reads_but_captions_do_not_use_are_refused(fmt, mode):
    data = encode(Image.new(mode, (16, 16), (1, 2, 3) + ((255,) if mode == "RGBA" else ())), fmt)
    assert Image.open(io.BytesIO(data)).format == fmt
    decode_fails(data, errors.DECODE_ERROR)


# ---------------------------------------------------------------- hostile bytes


def _small_encodings() -> list[bytes]:
    with Image.open(PHOTOS_DIR / "chelsea.jpg") as photo:
        small = photo.convert("RGB").resize((48, 32))
    out = [encode(small, fmt) for fmt in ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")]
    out.append(encode(small, "GIF", save_all=True, append_images=[small.rotate(90)]))
    out.append(encode(small.convert("RGBA"), "PNG"))
    return out


SMALL = _small_encodings()


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow's TIFF reader warns about the corrupt bytes
@settings(max_examples=300, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(
    which=st.integers(0, len(SMALL) - 1),
    position=st.floats(0, 1),
    patch=st.binary(min_size=1, max_size=8),
    cut=st.booleans(),
)
def test_corrupt_bytes_give_an_image_or_a_row_error(which, position, patch, cut):
    data = SMALL[which]
    at = int(position * (len(data) - 1))
    corrupt = data[:at] if cut else data[:at] + patch + data[at + len(patch):]
    try:
        image = decode_image(corrupt, 1_000_000)
    except RowError as error:
        assert error.kind in (errors.DECODE_ERROR, errors.DECOMPRESSION_BOMB), str(error)
    else:
        assert image.mode == "RGB" and image.width >= 1 and image.height >= 1


# ---------------------------------------------------------------- reduced-size JPEG decode


@pytest.mark.parametrize("size, min_side, expected", [
    ((2048, 1536), 448, (1024, 768)),  # 1/2: 1/4 would leave a 384 short side
    ((2048, 1536), 300, (512, 384)),  # 1/4
    ((4000, 3000), 224, (500, 375)),  # 1/8, the most libjpeg offers
    ((800, 600), 448, (800, 600)),  # already near the floor: whole
])
def test_reduced_jpeg_decode_keeps_both_sides_at_least_min_side(chelsea, size, min_side, expected):
    image = decode_image(encode(chelsea.resize(size), "JPEG", quality=90), LIMIT, min_side)
    assert image.size == expected


def test_reduced_decode_looks_like_the_whole_image_scaled_down(photos):
    whole = rgb(photos["retina"]).resize((1600, 1600), Image.Resampling.BICUBIC)
    data = encode(whole, "JPEG", quality=92)
    reduced = decode_image(data, LIMIT, 448)
    assert reduced.size == (800, 800)
    assert mean_abs_diff(reduced, whole.resize((800, 800), Image.Resampling.BOX)) < 3.0


def test_reduced_decode_leaves_other_formats_whole(chelsea):
    big = chelsea.resize((1800, 1200))
    assert decode_image(encode(big, "PNG"), LIMIT, 224).size == (1800, 1200)
    assert decode_image(encode(big, "WEBP", quality=90), LIMIT, 224).size == (1800, 1200)


def test_reduced_decode_follows_exif_orientation(chelsea):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown rotated 90 degrees
    data = encode(chelsea.resize((2000, 1000)), "JPEG", exif=exif)
    assert decode_image(data, LIMIT, 224).size == (250, 500)


def test_bomb_check_counts_the_full_size_not_the_reduced_one(chelsea, no_decoding):
    data = encode(chelsea.resize((2000, 1000)), "JPEG")
    with pytest.raises(RowError) as caught:
        decode_image(data, 1_000_000, 224)
    assert caught.value.kind == errors.DECOMPRESSION_BOMB


# ---------------------------------------------------------------- memory given back after large decodes


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_glibc_malloc_trim_is_found():
    trim = decode._load_malloc_trim()
    assert trim is not None and trim.__name__ == "malloc_trim"
    assert trim(0) in (0, 1)  # 1: memory was given back, 0: there was none to give


def test_only_a_large_decode_gives_memory_back(monkeypatch):
    calls = []
    monkeypatch.setattr(decode, "_malloc_trim", lambda pad: calls.append(pad))
    release_decode_memory(451 * 300)  # an ordinary photo: the common path pays nothing
    assert calls == []
    release_decode_memory(decode.TRIM_ABOVE_PIXELS)  # "at least this large"
    release_decode_memory(6300 * 6300)  # the size measured in docs/reliability.md
    assert calls == [0, 0]  # pad 0: give back all that can be
    release_decode_memory(decode.TRIM_ABOVE_PIXELS - 1)
    assert calls == [0, 0]


def test_without_malloc_trim_nothing_is_called(monkeypatch):
    monkeypatch.setattr(decode, "_malloc_trim", None)  # musl, macOS
    release_decode_memory(6300 * 6300)  # no AttributeError, no call
