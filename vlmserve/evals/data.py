"""Offline readers for evaluation data in Hugging Face dataset layouts: parquet or JSONL, images embedded or beside.

Evaluations must run without network access and without the `datasets` library, so a task reads a local copy of
the dataset repository (what `huggingface-cli download --repo-type dataset` writes, or a JSONL export). Rows are
read lazily, one parquet batch at a time and only the columns a task asks for, so `--limit 10` on VQAv2 does not
decode 200k images.
"""

import base64
import hashlib
import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
from PIL import Image, UnidentifiedImageError

# Split names HF repositories use as file-name prefixes; a file named after another split is never read.
KNOWN_SPLITS = ("train", "validation", "val", "dev", "test", "testmini", "testdev")
_PASSTHROUGH_FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg"}
_PARQUET_BATCH_ROWS = 16  # rows hold images, so batches stay small


class DataError(ValueError):
    """A data directory that lacks what a task needs: the directory, a split file, a column or an image."""


@dataclass(frozen=True)
class EncodedImage:
    """An image as sent to an OpenAI-compatible endpoint, and the sha256 of exactly those bytes."""

    url: str  # data:image/png;base64,... or data:image/jpeg;base64,...
    sha256: str


@dataclass(frozen=True)
class SplitFiles:
    """The files of one split of one dataset (config), in reading order, and the layout they should follow."""

    root: Path
    split: str
    files: tuple[Path, ...]
    layout: str  # shown in every error, so the user knows what to put where

    def columns(self) -> set[str]:
        """The columns of the first file: enough to tell apart the layouts a task accepts (e.g. two ChartQAs)."""
        return set(_file_columns(self.files[0], self.layout))

    def rows(self, required: Sequence[str], optional: Sequence[str] = (), images: Sequence[str] = (),
             limit: int | None = None) -> Iterator[dict]:
        """Yield rows holding the `required` columns and whichever `optional` ones exist, at most `limit` rows.

        Values of the `images` columns (a subset of the others) become encoded bytes-or-None via `image_bytes`.
        """
        if limit is not None and limit <= 0:
            return
        count = 0
        for path in self.files:
            present = _file_columns(path, self.layout)
            missing = [name for name in required if name not in present]
            if missing:
                raise DataError(
                    f"{path} lacks column(s) {', '.join(map(repr, missing))} (it has: {', '.join(present)}); "
                    f"expected layout: {self.layout}"
                )
            wanted = list(required) + [name for name in optional if name in present]
            for row in _file_rows(path, wanted, required):
                for name in images:
                    if name in row:
                        row[name] = image_bytes(row[name], (path.parent, self.root), f"{path} column {name!r}")
                yield row
                count += 1
                if limit is not None and count >= limit:
                    return


def find_split(data_dir: Path, split: str, layout: str, config: str | None = None) -> SplitFiles:
    """Locate the files of `split` under `data_dir` (or its `config` sub-folder, as in multi-config HF repos).

    Accepted, searched recursively: `<split>-*.parquet` / `<split>.parquet` (e.g. `data/validation-00000-of-00002
    .parquet`, `Accounting/validation-...parquet`) and `<split>.jsonl` / `<split>-*.jsonl`. With none of those,
    top-level `*.parquet` / `*.jsonl` files not named after another split are taken as the split itself.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"data directory {data_dir} does not exist; expected layout: {layout}")
    root = data_dir / config if config and (data_dir / config).is_dir() else data_dir
    patterns = [f"{split}{suffix}" for suffix in ("-*.parquet", ".parquet", ".jsonl", "-*.jsonl")]
    files = sorted({path for pattern in patterns for path in root.rglob(pattern)})
    if not files:
        files = sorted(path for ext in ("*.parquet", "*.jsonl") for path in root.glob(ext)
                       if not path.name.startswith(KNOWN_SPLITS))
    if not files:
        raise DataError(
            f"no {split!r} split under {root}: looked for {', '.join(patterns)} (recursively); "
            f"expected layout: {layout}"
        )
    return SplitFiles(root, split, tuple(files), layout)


def image_bytes(value, search_dirs: Sequence[Path], where: str) -> bytes | None:
    """Encoded image bytes from an HF `Image` struct `{bytes, path}`, raw bytes, or a path relative to the data."""
    if value is None:
        return None
    if isinstance(value, dict):
        if value.get("bytes"):
            return bytes(value["bytes"])
        value = value.get("path")
        if not value:
            return None
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        for directory in search_dirs:
            candidate = directory / value
            if candidate.is_file():
                return candidate.read_bytes()
        raise DataError(f"{where}: image file {value!r} not found under {', '.join(map(str, search_dirs))}")
    raise DataError(f"{where}: expected an image struct, bytes or a relative path, got {type(value).__name__}")


def encode_image(data: bytes) -> EncodedImage:
    """A data URL for the image: PNG and JPEG go as they are (no re-encoding loss), anything else as PNG."""
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise DataError(f"image data ({len(data)} bytes) is not a recognised image format") from None
    media_type = _PASSTHROUGH_FORMATS.get(image.format)
    if media_type is None:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        data, media_type = buffer.getvalue(), "image/png"
    url = f"data:{media_type};base64,{base64.b64encode(data).decode('ascii')}"
    return EncodedImage(url, hashlib.sha256(data).hexdigest())


def _file_columns(path: Path, layout: str) -> list[str]:
    if path.suffix == ".parquet":
        return pq.read_schema(path).names
    with path.open(encoding="utf-8") as file:
        for line in file:
            if line.strip():
                return list(_json_row(line, path, "first row"))
    raise DataError(f"{path} is empty; expected layout: {layout}")


def _file_rows(path: Path, columns: list[str], required: Sequence[str]) -> Iterator[dict]:
    if path.suffix == ".parquet":
        for batch in pq.ParquetFile(path).iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=columns):
            yield from batch.to_pylist()
        return
    with path.open(encoding="utf-8") as file:
        for number, line in enumerate(file, start=1):
            if line.strip():
                row = _json_row(line, path, f"line {number}")
                missing = [name for name in required if name not in row]
                if missing:
                    raise DataError(f"{path} line {number} lacks key(s) {', '.join(map(repr, missing))}")
                yield {name: row.get(name) for name in columns}


def _json_row(line: str, path: Path, where: str) -> dict:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as error:
        raise DataError(f"{path} ({where}) is not valid JSON: {error}") from None
    if not isinstance(row, dict):
        raise DataError(f"{path} ({where}) holds a {type(row).__name__}, expected one JSON object per line")
    return row
