"""Uploaded and generated files (OpenAI's Files API): contents on disk under `<data dir>/files/`, metadata in
SQLite, each file owned by the API key that uploaded it (or by the batch's, for a batch's output).

A file is written to a temporary name and renamed into place before its row is committed, so a listed file is
always whole. A file past its `expires_at` is gone: not listed, not found, deleted when the next file is saved.
"""

import os
import time
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from vlmserve.server.sqlite_db import Database

SCHEMA = """CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY, owner TEXT NOT NULL, filename TEXT NOT NULL, purpose TEXT NOT NULL,
    bytes INTEGER NOT NULL, created_at INTEGER NOT NULL, expires_at INTEGER);"""
_COLUMNS = "id, owner, filename, purpose, bytes, created_at, expires_at"


@dataclass(frozen=True)
class FileRecord:
    id: str
    owner: str
    filename: str
    purpose: str
    bytes: int
    created_at: int
    expires_at: int | None

    def as_object(self) -> dict:
        """OpenAI's file object."""
        fields = asdict(self)
        del fields["owner"]
        return {**fields, "object": "file", "status": "processed", "status_details": None}


class FileStore:
    def __init__(self, db: Database, data_dir: str | Path):
        self._db = db
        self.directory = Path(data_dir) / "files"
        self.directory.mkdir(parents=True, exist_ok=True)

    def path(self, file_id: str) -> Path:
        return self.directory / file_id

    def save(self, owner: str, filename: str, purpose: str, chunks: Iterable[bytes],
             expires_after_s: int | None = None, file_id: str | None = None) -> FileRecord:
        """Write `chunks` as a new file (or as `file_id` again: a batch's output written again after a restart)."""
        file_id = file_id or f"file-{uuid.uuid4().hex}"
        partial = self.directory / f".{file_id}.partial"
        with open(partial, "wb") as target:
            for chunk in chunks:
                target.write(chunk)
            target.flush()
            os.fsync(target.fileno())
        os.replace(partial, self.path(file_id))
        now = int(time.time())
        record = FileRecord(file_id, owner, filename, purpose, self.path(file_id).stat().st_size, now,
                            None if expires_after_s is None else now + expires_after_s)
        with self._db.transaction() as db:
            db.execute(f"INSERT OR REPLACE INTO files ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                       tuple(asdict(record).values()))
        self._delete_expired(now)
        return record

    def get(self, owner: str, file_id: str) -> FileRecord | None:
        """The file, if it exists, has not expired and belongs to `owner`."""
        rows = self._db.rows(f"SELECT {_COLUMNS} FROM files WHERE id = ? AND owner = ? AND "
                             "(expires_at IS NULL OR expires_at > ?)", (file_id, owner, int(time.time())))
        return FileRecord(*rows[0]) if rows else None

    def listing(self, owner: str, purpose: str | None, after: str | None, limit: int, newest_first: bool
             ) -> list[FileRecord]:
        """Up to `limit` of the owner's files in the order they were saved, starting after the file `after`."""
        order = "DESC" if newest_first else "ASC"
        query = [f"SELECT {_COLUMNS} FROM files WHERE owner = ? AND (expires_at IS NULL OR expires_at > ?)"]
        params: list = [owner, int(time.time())]
        if purpose is not None:
            query.append("AND purpose = ?")
            params.append(purpose)
        if after is not None:
            query.append(f"AND rowid {'<' if newest_first else '>'} (SELECT rowid FROM files WHERE id = ?)")
            params.append(after)
        query.append(f"ORDER BY rowid {order} LIMIT ?")
        return [FileRecord(*row) for row in self._db.rows(" ".join(query), (*params, limit))]

    def delete(self, owner: str, file_id: str) -> bool:
        with self._db.transaction() as db:
            deleted = db.execute("DELETE FROM files WHERE id = ? AND owner = ?", (file_id, owner)).rowcount > 0
        if deleted:
            self.path(file_id).unlink(missing_ok=True)
        return deleted

    def _delete_expired(self, now: int) -> None:
        with self._db.transaction() as db:
            expired = [row[0] for row in db.execute("SELECT id FROM files WHERE expires_at <= ?", (now,))]
            db.execute("DELETE FROM files WHERE expires_at <= ?", (now,))
        for file_id in expired:
            self.path(file_id).unlink(missing_ok=True)
