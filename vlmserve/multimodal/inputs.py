"""Image inputs: bytes, paths, file:// and data: URLs -> PIL images (header checked first, pixels decoded on demand),
plus a content hash and the RGB conversion every processor starts from."""

import base64
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Iterator
from urllib.parse import unquote, urlparse

from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_IMAGE_PIXELS = 50_000_000
DEFAULT_MAX_REQUEST_PIXELS = 2 * DEFAULT_MAX_IMAGE_PIXELS  # summed over one request's images
SUPPORTED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
STRIP_PIXELS = 1 << 20  # see row_strips
_MAX_SHOWN_SOURCE_CHARS = 80

# Pillow's process-wide decompression-bomb limit (~89M pixels warns, ~179M raises) would answer before our own
# `max_pixels` check, with its limit instead of ours; ours, made from the header before decoding, replaces it.
Image.MAX_IMAGE_PIXELS = None


@dataclass(frozen=True)
class OneTile:
    """An image source to process as a single tile, the cheapest image (OpenAI's `detail: "low"`)."""

    source: Any


class ImageInputError(ValueError):
    """An image input that cannot be used: unreadable, corrupt, empty, too large or of an unsupported kind."""


class OpenedImage:
    """An image input whose header has been read and whose size has been checked; its pixels are not decoded yet.

    Holds the input's stream (closed by `decode` or `close`; also a context manager), not its pixels.
    """

    def __init__(self, image: Image.Image, what: str, stream: IO[bytes] | None = None):
        self._image, self._what, self._stream = image, what, stream
        self.size = image.size

    @property
    def num_pixels(self) -> int:
        return self.size[0] * self.size[1]

    def decode(self) -> Image.Image:
        """The decoded, upright image (once). It is no longer referenced here: its caller decides how long it lives."""
        image, self._image = self._image, None
        try:
            return _decoded(image, self._what)
        finally:
            self.close()

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()

    def __enter__(self) -> "OpenedImage":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def load_image(source, *, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode an image fully, so that any defect surfaces here as an `ImageInputError`.

    `source` is a PIL image, `bytes`/`bytearray`, a `pathlib.Path`, or a `str` holding a file path, a `file://`
    URL or a `data:image/<fmt>;base64,...` URL. Encoded inputs may be PNG, JPEG, WebP, GIF (first frame) or BMP.
    Images with more than `max_pixels` pixels are rejected from their header, before their pixels are decoded.
    The EXIF orientation is applied; the mode is left as decoded (RGB conversion is the processor's job).
    """
    return open_image(source, max_pixels=max_pixels).decode()


def open_image(source, *, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> OpenedImage:
    """Read and check the header of `source` (any input `load_image` takes) without decoding its pixels."""
    if isinstance(source, Image.Image):
        return OpenedImage(_checked_size(source, "the PIL image", max_pixels), "the PIL image")
    if isinstance(source, (bytes, bytearray)):
        return _open_bytes(bytes(source), f"image bytes ({len(source)} bytes)", max_pixels)
    if isinstance(source, Path):
        return _open_file(source, max_pixels)
    if isinstance(source, str):
        return _open_string(source, max_pixels)
    raise ImageInputError(
        f"unsupported image input of type {type(source).__name__}; "
        "pass a PIL image, bytes, a pathlib.Path, a file path, a file:// URL or a data:image/...;base64 URL"
    )


def image_content_hash(image: Image.Image) -> str:
    """Hex sha256 of the decoded image (mode, size, palette, transparency, pixels), independent of file encoding."""
    digest = hashlib.sha256()
    transparency = image.info.get("transparency")
    palette = image.getpalette() if image.mode in ("P", "PA") else None
    for field in (image.mode, repr(image.size), repr(palette), repr(transparency)):
        _update_with_length(digest, field.encode())
    _update_with_pixels(digest, image)
    return digest.hexdigest()


def _update_with_length(digest, data: bytes) -> None:
    # Length-prefixed fields, so that no two different field sequences hash the same byte stream.
    digest.update(len(data).to_bytes(8, "little"))
    digest.update(data)


def _update_with_pixels(digest, image: Image.Image) -> None:
    # The bytes `_update_with_length(digest, image.tobytes())` hashes, without tobytes()'s full-size copies.
    width, height = image.size
    digest.update((len(image.crop((0, 0, width, 1)).tobytes()) * height).to_bytes(8, "little"))
    for _, strip in row_strips(image):
        digest.update(strip.tobytes())


def row_strips(image: Image.Image) -> Iterator[tuple[int, Image.Image]]:
    """(first row, copy of the rows from there) covering `image` top to bottom, about `STRIP_PIXELS` each: per-pixel
    work on a large image without a second full-size copy of it."""
    width, height = image.size
    rows = max(1, STRIP_PIXELS // max(width, 1))
    for top in range(0, height, rows):
        yield top, image.crop((0, top, width, min(top + rows, height)))


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB as HF converts it: anything with alpha or a transparency entry is composited onto white.

    An RGB image comes back as is. Others are converted a strip of rows at a time (the conversion is per pixel), so
    no full-size intermediate (RGBA copy, white backdrop, composite) is made besides the result."""
    if image.mode == "RGB" and image.info.get("transparency") is None:
        return image
    rgb = Image.new("RGB", image.size)
    for top, strip in row_strips(image):
        rgb.paste(_strip_to_rgb(strip), (0, top))
    return rgb


def _strip_to_rgb(image: Image.Image) -> Image.Image:
    has_alpha = "A" in image.getbands() or image.info.get("transparency") is not None
    if not has_alpha:
        return image.convert("RGB")
    white = Image.new("RGBA", image.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, image.convert("RGBA")).convert("RGB")


def _open_string(source: str, max_pixels: int) -> OpenedImage:
    scheme = source[:8].lower()  # URL schemes are case-insensitive (RFC 3986)
    if scheme.startswith(("http://", "https://")):
        raise ImageInputError(
            f"remote image URL {_shown(source)} cannot be loaded here: the server fetches remote URLs; "
            "pass bytes, a file path or a data:image/...;base64 URL instead"
        )
    if scheme.startswith("data:"):
        return _open_bytes(_data_url_payload(source), "the data URL", max_pixels)
    if scheme.startswith("file:"):
        return _open_file(_file_url_path(source), max_pixels)
    return _open_file(Path(source), max_pixels)


def _data_url_payload(url: str) -> bytes:
    header, comma, payload = url.partition(",")
    header = header.lower()  # the scheme, media type and ;base64 are all case-insensitive
    media_type = header[len("data:"):].split(";")[0]
    if not comma or not header.endswith(";base64") or not media_type.startswith("image/"):
        raise ImageInputError(
            f"malformed image data URL {_shown(url)}; expected data:image/<format>;base64,<base64 data>"
        )
    try:
        return base64.b64decode(payload, validate=True)
    except ValueError as error:  # binascii.Error, or non-ASCII text
        raise ImageInputError(f"the image data URL holds invalid base64: {error}") from None


def _file_url_path(url: str) -> Path:
    parsed = urlparse(url)
    if parsed.netloc not in ("", "localhost") or not parsed.path:
        raise ImageInputError(f"malformed file URL {_shown(url)}; expected file:///absolute/path")
    return Path(unquote(parsed.path))


def _open_file(path: Path, max_pixels: int) -> OpenedImage:
    what = f"image file {_shown(str(path))}"
    try:
        file = open(path, "rb")
    except FileNotFoundError:
        raise ImageInputError(f"{what} does not exist") from None
    except (OSError, ValueError) as error:  # ValueError: a NUL byte in the path
        raise ImageInputError(f"{what} cannot be read: {getattr(error, 'strerror', None) or error}") from None
    try:
        return _open_stream(file, what, max_pixels)
    except ImageInputError:
        file.close()
        raise


def _open_bytes(data: bytes, what: str, max_pixels: int) -> OpenedImage:
    if not data:
        raise ImageInputError(f"{what} is empty")
    return _open_stream(io.BytesIO(data), what, max_pixels)


def _open_stream(stream: IO[bytes], what: str, max_pixels: int) -> OpenedImage:
    try:
        image = Image.open(stream, formats=SUPPORTED_FORMATS)
    except UnidentifiedImageError:
        raise ImageInputError(
            f"{what} is not a recognised image; supported formats: {', '.join(SUPPORTED_FORMATS)}"
        ) from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageInputError(f"{what} has an unreadable header: {error}") from None
    return OpenedImage(_checked_size(image, what, max_pixels), what, stream)


def _checked_size(image: Image.Image, what: str, max_pixels: int) -> Image.Image:
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageInputError(f"{what} has zero size ({width}x{height})")
    if width * height > max_pixels:
        raise ImageInputError(f"{what} has {width}x{height} = {width * height} pixels, more than {max_pixels} allowed")
    return image


def _decoded(image: Image.Image, what: str) -> Image.Image:
    try:
        image.load()
        return _upright(image)
    except Exception as error:  # decoders raise OSError, SyntaxError, ValueError, struct.error, EOFError...
        raise ImageInputError(f"{what} is corrupt or truncated: {error}") from None


def _upright(image: Image.Image) -> Image.Image:
    # Photos are often stored sideways with an EXIF orientation tag; viewers (and HF's load_image) rotate them.
    if image.getexif().get(ExifTags.Base.Orientation, 1) == 1:
        return image
    return ImageOps.exif_transpose(image)


def _shown(text: str) -> str:
    if len(text) <= _MAX_SHOWN_SOURCE_CHARS:
        return repr(text)
    return repr(text[:_MAX_SHOWN_SOURCE_CHARS] + "...")
