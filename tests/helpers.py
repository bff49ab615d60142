"""Helpers shared by the tests of every directory (`from tests.helpers import ...`): how far a tensor is from its
reference and the one tolerance the parity tests hold it to, and images made in memory (solid or random pixels,
as PNG bytes or data URLs, or a PNG header that claims a size)."""

import base64
import io
import os
import struct
import zlib

import numpy as np
import torch
from PIL import Image

# Relative (Frobenius) error allowed between our float32 outputs and the reference's: transformers', or one rank's
# against tensor-parallel ranks'. Both sides compute the same function in float32; what is left is summation order.
REL_TOL = 1e-5


def relative_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """||ours - ref|| / ||ref||, Frobenius norms."""
    return ((ours - ref).norm() / ref.norm()).item()


def random_image(height: int = 17, width: int = 23, seed: int = 0) -> Image.Image:
    """RGB noise: every pixel drawn uniformly from `seed`."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def image_bytes(image: Image.Image, image_format: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def png_bytes(image: Image.Image | None = None, *, size: tuple[int, int] = (40, 30),
              color: tuple[int, int, int] | str = (200, 30, 60)) -> bytes:
    """`image` as a PNG file; without one, a solid `color` image of `size` (width, height)."""
    return image_bytes(Image.new("RGB", size, color) if image is None else image)


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def png_data_url(image: Image.Image | None = None, *, size: tuple[int, int] = (40, 30),
                 color: tuple[int, int, int] | str = (200, 30, 60)) -> str:
    """png_bytes(...) as a data URL."""
    return data_url(png_bytes(image, size=size, color=color))


def noise_png_data_url(side: int) -> str:
    """A PNG that does not compress: about 3 * side**2 bytes."""
    return png_data_url(Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)))


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_header_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims the given size, with no real pixel data behind it: decoding it fails."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(b""))
            + png_chunk(b"IEND", b""))
