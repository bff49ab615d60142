"""Image inputs: bytes, paths, file:// and data: URLs -> decoded PIL images, plus a content hash."""

import base64
import hashlib
import io
import warnings
from pathlib import Path
from urllib.parse import unquote, urlparse

from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_IMAGE_PIXELS = 50_000_000
SUPPORTED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
_MAX_SHOWN_SOURCE_CHARS = 80


class ImageInputError(ValueError):
    """An image input that cannot be used: unreadable, corrupt, empty, too large or of an unsupported kind."""


def load_image(source, *, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode an image fully, so that any defect surfaces here as an `ImageInputError`.

    `source` is a PIL image, `bytes`/`bytearray`, a `pathlib.Path`, or a `str` holding a file path, a `file://`
    URL or a `data:image/<fmt>;base64,...` URL. Encoded inputs may be PNG, JPEG, WebP, GIF (first frame) or BMP.
    Images with more than `max_pixels` pixels are rejected from their header, before their pixels are decoded.
    The EXIF orientation is applied; the mode is left as decoded (RGB conversion is the processor's job).
    """
    if isinstance(source, Image.Image):
        return _checked(source, "the PIL image", max_pixels)
    if isinstance(source, (bytes, bytearray)):
        return _decode_bytes(bytes(source), f"image bytes ({len(source)} bytes)", max_pixels)
    if isinstance(source, Path):
        return _decode_file(source, max_pixels)
    if isinstance(source, str):
        return _load_string(source, max_pixels)
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
    _update_with_length(digest, image.tobytes())
    return digest.hexdigest()


def _update_with_length(digest, data: bytes) -> None:
    # Length-prefixed fields, so that no two different field sequences hash the same byte stream.
    digest.update(len(data).to_bytes(8, "little"))
    digest.update(data)


def _load_string(source: str, max_pixels: int) -> Image.Image:
    if source.startswith(("http://", "https://")):
        raise ImageInputError(
            f"remote image URL {_shown(source)} cannot be loaded here: the server fetches remote URLs; "
            "pass bytes, a file path or a data:image/...;base64 URL instead"
        )
    if source.startswith("data:"):
        return _decode_bytes(_data_url_payload(source), "the data URL", max_pixels)
    if source.startswith("file:"):
        return _decode_file(_file_url_path(source), max_pixels)
    return _decode_file(Path(source), max_pixels)


def _data_url_payload(url: str) -> bytes:
    header, comma, payload = url.partition(",")
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


def _decode_file(path: Path, max_pixels: int) -> Image.Image:
    what = f"image file {_shown(str(path))}"
    try:
        file = open(path, "rb")
    except FileNotFoundError:
        raise ImageInputError(f"{what} does not exist") from None
    except (OSError, ValueError) as error:  # ValueError: a NUL byte in the path
        raise ImageInputError(f"{what} cannot be read: {getattr(error, 'strerror', None) or error}") from None
    with file:
        return _decode_stream(file, what, max_pixels)


def _decode_bytes(data: bytes, what: str, max_pixels: int) -> Image.Image:
    if not data:
        raise ImageInputError(f"{what} is empty")
    return _decode_stream(io.BytesIO(data), what, max_pixels)


def _decode_stream(stream, what: str, max_pixels: int) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(stream, formats=SUPPORTED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageInputError(f"{what} is too large to decode safely: {error}") from None
    except UnidentifiedImageError:
        raise ImageInputError(
            f"{what} is not a recognised image; supported formats: {', '.join(SUPPORTED_FORMATS)}"
        ) from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageInputError(f"{what} has an unreadable header: {error}") from None
    return _checked(image, what, max_pixels)


def _checked(image: Image.Image, what: str, max_pixels: int) -> Image.Image:
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageInputError(f"{what} has zero size ({width}x{height})")
    if width * height > max_pixels:
        raise ImageInputError(f"{what} has {width}x{height} = {width * height} pixels, more than {max_pixels} allowed")
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
