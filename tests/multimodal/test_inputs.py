"""Image decoding from every accepted source, the errors for bad inputs, and the content hash."""

import base64
import hashlib
import io
import struct
import weakref
import zlib

import numpy as np
import pytest
from PIL import Image

from tests.helpers import (
    data_url,
    image_bytes,
    png_chunk,
    png_header_claiming,
    random_image,
)
from vlmserve.multimodal import inputs
from vlmserve.multimodal.inputs import (
    DEFAULT_MAX_IMAGE_PIXELS,
    ImageInputError,
    image_content_hash,
    load_image,
    open_image,
)

SOURCE_KINDS = ["bytes", "bytearray", "path", "str-path", "file-url", "data-url"]
# (format, save options, whether decoding gives back the exact pixels that were saved)
FORMATS = [("PNG", {}, True), ("JPEG", {"quality": 90}, False), ("WEBP", {"lossless": True}, True),
           ("GIF", {}, True), ("BMP", {}, True)]


def as_source(data: bytes, kind: str, tmp_path, suffix: str = "img"):
    path = tmp_path / f"image.{suffix}"
    path.write_bytes(data)
    return {
        "bytes": data,
        "bytearray": bytearray(data),
        "path": path,
        "str-path": str(path),
        "file-url": path.as_uri(),
        "data-url": data_url(data, f"image/{suffix}"),
    }[kind]


@pytest.mark.parametrize("kind", SOURCE_KINDS)
@pytest.mark.parametrize("image_format, options, lossless", FORMATS, ids=[f[0] for f in FORMATS])
def test_each_format_loads_from_each_source_kind(image_format, options, lossless, kind, tmp_path):
    original = random_image().quantize(64) if image_format == "GIF" else random_image()
    data = image_bytes(original, image_format, **options)
    image = load_image(as_source(data, kind, tmp_path, image_format.lower()))
    assert image.size == original.size
    expected = original if lossless else Image.open(io.BytesIO(data))
    assert np.array_equal(np.asarray(image.convert("RGB")), np.asarray(expected.convert("RGB")))


def test_pil_image_is_returned_loaded_in_its_mode():
    original = Image.new("LA", (5, 4), (100, 50))
    image = load_image(Image.open(io.BytesIO(image_bytes(original, "PNG"))))
    assert image.mode == "LA"
    assert image.tobytes() == original.tobytes()


def test_gif_gives_its_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 6), color) for color in [(255, 0, 0), (0, 0, 255)]]
    data = image_bytes(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert Image.open(io.BytesIO(data)).n_frames == 2
    image = load_image(data)
    assert image.convert("RGB").getpixel((3, 3)) == (255, 0, 0)


def test_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    data = image_bytes(Image.new("RGB", (20, 10)), "JPEG", exif=exif.tobytes())
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
    data = image_bytes(random_image(200, 200), "PNG")
    with pytest.raises(ImageInputError, match="truncated"):
        load_image(data[: len(data) // 2])


def test_unsupported_format_is_rejected():
    with pytest.raises(ImageInputError, match="PNG, JPEG, WEBP, GIF, BMP"):
        load_image(image_bytes(random_image(), "TIFF"))


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
    data = image_bytes(random_image(100, 100), "PNG")
    assert load_image(data, max_pixels=10_000).size == (100, 100)
    with pytest.raises(ImageInputError, match="more than 9999 allowed"):
        load_image(data, max_pixels=9_999)


@pytest.mark.parametrize("side", [10_000, 20_000])  # above Pillow's own limits: it warns over ~89M, refuses ~179M
def test_our_pixel_limit_answers_whatever_the_size(side):
    with pytest.raises(ImageInputError, match=f"{side}x{side} = {side * side} pixels, more than 50000000 allowed"):
        load_image(png_header_claiming(side, side))


def test_a_limit_raised_above_pillows_is_ours_to_enforce():
    with open_image(png_header_claiming(20_000, 20_000), max_pixels=400_000_000) as opened:  # header only
        assert opened.num_pixels == 400_000_000
    with pytest.raises(ImageInputError, match="40000x40000 = 1600000000 pixels, more than 1000000000 allowed"):
        load_image(png_header_claiming(40_000, 40_000), max_pixels=1_000_000_000)


def test_an_image_above_pillows_limit_decodes_within_ours():
    width, height = 10_000, 9_000  # 90M pixels: Pillow alone would refuse it (warning turned error) or warn
    assert width * height > 89_478_485
    rows = zlib.compress(b"\x00" * ((1 + width // 8) * height))  # a filter byte and 1250 black bytes a row
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", rows) + png_chunk(b"IEND", b"")
    image = load_image(data, max_pixels=100_000_000)
    assert (image.mode, image.size, image.getextrema()) == ("1", (width, height), (0, 0))


def test_open_image_reads_the_header_and_decode_gives_the_image_once(tmp_path):
    path = tmp_path / "image.png"
    path.write_bytes(image_bytes(random_image(), "PNG"))
    opened = open_image(path)
    assert opened.size == (23, 17) and opened.num_pixels == 23 * 17
    image = opened.decode()
    assert image_content_hash(image) == image_content_hash(random_image())
    reference = weakref.ref(image)
    del image
    assert reference() is None  # the OpenedImage keeps no reference to the pixels it decoded


@pytest.mark.parametrize("ending", ["decode", "close", "header error"])
def test_image_files_are_closed(ending, tmp_path, monkeypatch):
    files = []

    def tracking_open(*args, **kwargs):
        files.append(open(*args, **kwargs))  # noqa: SIM115 (the test checks that the code closes them)
        return files[-1]
    monkeypatch.setattr(inputs, "open", tracking_open, raising=False)
    path = tmp_path / "image.png"
    path.write_bytes(b"not an image" if ending == "header error" else image_bytes(random_image(), "PNG"))
    if ending == "header error":
        with pytest.raises(ImageInputError, match="not a recognised image"):
            open_image(path)
    else:
        opened = open_image(path)
        assert not files[0].closed
        opened.decode() if ending == "decode" else opened.close()
    assert len(files) == 1 and files[0].closed


@pytest.mark.parametrize("prefix", ["DATA:image/png;base64,", "Data:IMAGE/PNG;BASE64,"])
def test_data_url_scheme_and_media_type_are_case_insensitive(prefix):
    data = image_bytes(random_image(), "PNG")
    image = load_image(prefix + base64.b64encode(data).decode())
    assert image_content_hash(image) == image_content_hash(random_image())


def test_file_url_scheme_is_case_insensitive(tmp_path):
    path = tmp_path / "image.png"
    path.write_bytes(image_bytes(random_image(), "PNG"))
    assert load_image("FILE" + path.as_uri()[len("file"):]).size == (23, 17)


@pytest.mark.parametrize("url", ["HTTP://example.com/cat.png", "Https://example.com/cat.png"])
def test_uppercase_remote_urls_are_left_to_the_server(url):
    with pytest.raises(ImageInputError, match="server fetches remote URLs"):
        load_image(url)


def test_hash_depends_on_pixels_not_on_file_encoding():
    image = random_image()
    from_png = load_image(image_bytes(image, "PNG"))
    from_bmp = load_image(image_bytes(image, "BMP"))
    assert image_content_hash(from_png) == image_content_hash(from_bmp) == image_content_hash(image)
    assert len(image_content_hash(image)) == 64
    assert image_content_hash(random_image(seed=1)) != image_content_hash(image)
    assert image_content_hash(random_image(23, 17)) != image_content_hash(random_image(17, 23))


def test_hash_depends_on_palette_and_transparency():
    image = Image.new("P", (4, 4), 1)
    image.putpalette([0, 0, 0, 255, 0, 0])
    recoloured = image.copy()
    recoloured.putpalette([0, 0, 0, 0, 255, 0])
    transparent = image.copy()
    transparent.info["transparency"] = 1
    hashes = {image_content_hash(version) for version in (image, recoloured, transparent)}
    assert len(hashes) == 3


def test_hash_values_are_unchanged():
    """Digests as the first implementation (sha256 over image.tobytes() in one piece) computed them."""
    palette = random_image(9, 31, seed=3).quantize(16)
    palette.info["transparency"] = 2
    assert image_content_hash(random_image()) == "05abec9e7adb13c0663f93a546d5536c464d83f15eed5fa9c0cb6b1d8e216a31"
    assert image_content_hash(palette) == "77d776123a96d1a22fa25b5e721b60b426af60eed102b9073adcc78024a2e64f"
    bilevel = random_image(11, 13, seed=4).convert("1")
    assert image_content_hash(bilevel) == "249866af6af869521832cde0c9f0cfed1265c69bb434d6d35acd05959f715d0c"


@pytest.mark.parametrize("mode", ["1", "L", "P", "LA", "PA", "RGB", "RGBA", "CMYK", "YCbCr", "I", "F", "I;16"])
@pytest.mark.parametrize("strip_pixels", [1, 40, 1 << 20])  # a row a strip, a few rows, the whole image
def test_hash_in_row_strips_equals_hash_of_all_bytes(mode, strip_pixels, monkeypatch):
    monkeypatch.setattr(inputs, "STRIP_PIXELS", strip_pixels)
    image = random_image(7, 13).convert("L" if mode in ("I", "F", "I;16") else mode).convert(mode)
    digest = hashlib.sha256()
    palette = image.getpalette() if image.mode in ("P", "PA") else None
    for field in (image.mode, repr(image.size), repr(palette), repr(image.info.get("transparency"))):
        digest.update(len(field.encode()).to_bytes(8, "little") + field.encode())
    digest.update(len(image.tobytes()).to_bytes(8, "little") + image.tobytes())
    assert image_content_hash(image) == digest.hexdigest()
