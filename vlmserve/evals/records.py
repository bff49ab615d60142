"""The resumable answer cache: one append-only JSONL file per (endpoint, task), one record per answer.

Each record is written and flushed to disk as its answer arrives, so a run that is interrupted loses nothing
it was told. On the next run an item is asked again only if it has no "ok" record for the same request
(same prompt, images and generation settings: `request_key`); errors are always asked again. The last record
for an item wins.
"""

import hashlib
import json
import os
from pathlib import Path

OK, ERROR = "ok", "error"


def request_key(body: dict) -> str:
    """sha256 of the request as sent (messages with their images, max_tokens, temperature, seed)."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class RecordFile:
    def __init__(self, path: Path):
        self.path = path

    def load(self) -> dict[str, dict]:
        """item_id -> its latest record. A torn last line (the process died mid-write) is skipped."""
        latest = {}
        if not self.path.exists():
            return latest
        with self.path.open(encoding="utf-8") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                latest[record["item_id"]] = record
        return latest

    def answered(self, keys: dict[str, str]) -> dict[str, dict]:
        """The ok records whose request matches `keys` (item_id -> request_key): these are not asked again."""
        return {item_id: record for item_id, record in self.load().items()
                if record["status"] == OK and keys.get(item_id) == record["request_key"]}

    def __enter__(self) -> "RecordFile":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")
        self._ends_cleanly()
        return self

    def __exit__(self, *exc) -> None:
        self._file.close()

    def append(self, record: dict) -> None:
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def _ends_cleanly(self) -> None:
        """After a torn write, start on a fresh line so the next record stays readable."""
        if self.path.stat().st_size == 0:
            return
        with self.path.open("rb") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                self._file.write("\n")
