"""Image decoding from every accepted source, the errors for bad inputs, and the content hash."""

import base64
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from vlmserve.multimodal.inputs import DEFAULT_MAX_IMAGE_PIXELS, ImageInputError, image_content_hash, load_image

SOURCE_KINDS = ["bytes", "bytearray", "path", "str-path", "file-url", "data-url"]
# (format, save options, whether decoding gives back the exact pixels that were saved)
FORMATS = [("PNG", {}, True), ("JPEG", {"quality": 90}, False), ("WEBP", {"lossless": True}, True),
           ("GIF", {}, True), ("BMP", {}, True)]


def noise_image(width: int = 23, height: int = 17, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def encode(image: Image.Image, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def as_source(data: bytes, kind: str, tmp_path, suffix: str = "img"):
    path = tmp_path / f"image.{suffix}"
    path.write_bytes(data)
    return {
        "bytes": data,
        "bytearray": bytearray(data),
        "path": path,
        "str-path": str(path),
        "file-url": path.as_uri(),
        "data-url": f"data:image/{suffix};base64,{base64.b64encode(data).decode()}",
    }[kind]


def png_header_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims the given size, with no real pixel data behind it."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


@pytest.mark.parametrize("kind", SOURCE_KINDS)
@pytest.mark.parametrize("image_format, options, lossless", FORMATS, ids=[f[0] for f in FORMATS])
def test_each_format_loads_from_each_source_kind(image_format, options, lossless, kind, tmp_path):
    original = noise_image().quantize(64) if image_format == "GIF" else noise_image()
    data = encode(original, image_format, **options)
    image = load_image(as_source(data, kind, tmp_path, image_format.lower()))
    assert image.size == original.size
    expected = original if lossless else Image.open(io.BytesIO(data))
    assert np.array_equal(np.asarray(image.convert("RGB")), np.asarray(expected.convert("RGB")))


def test_pil_image_is_returned_loaded_in_its_mode():
    original = Image.new("LA", (5, 4), (100, 50))
    image = load_image(Image.open(io.BytesIO(encode(original, "PNG"))))
    assert image.mode == "LA"
    assert image.tobytes() == original.tobytes()


def test_gif_gives_its_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 6), color) for color in [(255, 0, 0), (0, 0, 255)]]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert Image.open(io.BytesIO(data)).n_frames == 2
    image = load_image(data)
    assert image.convert("RGB").getpixel((3, 3)) == (255, 0, 0)


def test_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    data = encode(Image.new("RGB", (20, 10)), "JPEG", exif=exif.tobytes())
    assert load_image(data).size == (10, 20)


@pytest.mark.parametrize("source, match", [
    (b"", "empty"),
    (b"definitely not an image", "not a recognised image"),
    ("data:image/png;base64,", "empty"),
    ("data:image/png;base64,@@not-base64@@", "invalid base64"),
    ("data:image/png;base64,ünïcode", "invalid base64"),
    ("data:image/png,rawbytes", "malformed image data URL"),
    ("data:text/plain;base64,aGVsbG8=", "malformed image data URL"),
    ("file://otherhost/x.png", "malformed file URL"),
    (12345, "unsupported image input of type int"),
])
def test_bad_inputs_raise_image_input_error(source, match):
    with pytest.raises(ImageInputError, match=match):
        load_image(source)


def test_truncated_png_fails_at_load():
    data = encode(noise_image(200, 200), "PNG")
    with pytest.raises(ImageInputError, match="truncated"):
        load_image(data[: len(data) // 2])


def test_unsupported_format_is_rejected():
    with pytest.raises(ImageInputError, match="PNG, JPEG, WEBP, GIF, BMP"):
        load_image(encode(noise_image(), "TIFF"))


def test_zero_size_image_is_rejected():
    with pytest.raises(ImageInputError, match="zero size"):
        load_image(Image.new("RGB", (0, 7)))


@pytest.mark.parametrize("url", ["http://example.com/cat.png", "https://example.com/cat.png"])
def test_remote_urls_are_left_to_the_server(url):
    with pytest.raises(ImageInputError, match="server fetches remote URLs"):
        load_image(url)


@pytest.mark.parametrize("kind", ["path", "str-path", "file-url"])
def test_missing_file_is_named(kind, tmp_path):
    source = as_source(b"x", kind, tmp_path, "png")
    (tmp_path / "image.png").unlink()
    with pytest.raises(ImageInputError, match="image.png' does not exist"):
        load_image(source)


def test_pixel_limit_is_checked_from_the_header_before_decoding():
    claimed = png_header_claiming(8000, 8000)  # 64M pixels: above our default, below PIL's own bomb limit
    assert 8000 * 8000 > DEFAULT_MAX_IMAGE_PIXELS
    # Had the pixels been decoded, the missing data would have failed as "truncated" instead.
    with pytest.raises(ImageInputError, match="8000x8000 = 64000000 pixels, more than 50000000 allowed"):
        load_image(claimed)


def test_pixel_limit_is_configurable_per_call():
    data = encode(noise_image(100, 100), "PNG")
    assert load_image(data, max_pixels=10_000).size == (100, 100)
    with pytest.raises(ImageInputError, match="more than 9999 allowed"):
        load_image(data, max_pixels=9_999)


@pytest.mark.parametrize("side", [10_000, 20_000])  # PIL warns above ~89M pixels and refuses above ~179M
def test_pil_decompression_bomb_checks_become_image_input_errors(side):
    max_image_pixels = Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageInputError, match="too large to decode safely"):
        load_image(png_header_claiming(side, side), max_pixels=10**12)
    assert Image.MAX_IMAGE_PIXELS == max_image_pixels


def test_hash_depends_on_pixels_not_on_file_encoding():
    image = noise_image()
    from_png = load_image(encode(image, "PNG"))
    from_bmp = load_image(encode(image, "BMP"))
    assert image_content_hash(from_png) == image_content_hash(from_bmp) == image_content_hash(image)
    assert len(image_content_hash(image)) == 64
    assert image_content_hash(noise_image(seed=1)) != image_content_hash(image)
    assert image_content_hash(noise_image(17, 23)) != image_content_hash(noise_image(23, 17))


def test_hash_depends_on_palette_and_transparency():
    image = Image.new("P", (4, 4), 1)
    image.putpalette([0, 0, 0, 255, 0, 0])
    recoloured = image.copy()
    recoloured.putpalette([0, 0, 0, 0, 255, 0])
    transparent = image.copy()
    transparent.info["transparency"] = 1
    hashes = {image_content_hash(version) for version in (image, recoloured, transparent)}
    assert len(hashes) == 3
