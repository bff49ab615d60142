"""Batches and their answered lines, in SQLite beside the files (one database, `batches.sqlite3`).

A batch row keeps OpenAI's batch object as last written; its `request_counts` and `usage` are summed from the
lines table whenever it is read. Each answered line is committed as it completes, keyed by (batch, line number):
after a crash the batch resumes with the lines that have no row, and a line recorded twice keeps its first answer.
"""

import json
from dataclasses import dataclass

from vlmserve.server.file_store import SCHEMA as FILES_SCHEMA
from vlmserve.server.sqlite_db import Database

FILE_NAME = "batches.sqlite3"
UNFINISHED = ("validating", "in_progress", "finalizing", "cancelling")
SCHEMA = FILES_SCHEMA + """
CREATE TABLE IF NOT EXISTS batches (
    id TEXT PRIMARY KEY, owner TEXT NOT NULL, status TEXT NOT NULL, created_at INTEGER NOT NULL,
    batch TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS batch_lines (
    batch_id TEXT NOT NULL, line INTEGER NOT NULL, succeeded INTEGER NOT NULL, output TEXT NOT NULL,
    input_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL, num_images INTEGER NOT NULL,
    cost REAL NOT NULL, PRIMARY KEY (batch_id, line));"""


@dataclass(frozen=True)
class LineResult:
    line: int  # its place in the input file, counting non-blank lines from 0
    succeeded: bool  # a 2xx answer: the output file; otherwise the error file
    output: dict  # the output file's line: {id, custom_id, response, error}
    input_tokens: int = 0
    output_tokens: int = 0
    num_images: int = 0
    cost: float = 0.0


class BatchStore:
    def __init__(self, db: Database):
        self._db = db

    def create(self, owner: str, batch: dict) -> None:
        with self._db.transaction() as db:
            db.execute("INSERT INTO batches VALUES (?, ?, ?, ?, ?)",
                       (batch["id"], owner, batch["status"], batch["created_at"], json.dumps(batch)))

    def get(self, batch_id: str, owner: str | None = None) -> dict | None:
        """The batch object with its counts and usage; None if it does not exist or is not `owner`'s."""
        rows = self._db.rows("SELECT owner, batch FROM batches WHERE id = ?", (batch_id,))
        if not rows or (owner is not None and rows[0][0] != owner):
            return None
        return self._with_counts(json.loads(rows[0][1]))

    def owner(self, batch_id: str) -> str:
        return self._db.rows("SELECT owner FROM batches WHERE id = ?", (batch_id,))[0][0]

    def listing(self, owner: str, after: str | None, limit: int) -> list[dict]:
        """The owner's batches, newest first, starting after the batch `after`."""
        query, params = "SELECT batch FROM batches WHERE owner = ?", [owner]
        if after is not None:
            query += " AND rowid < (SELECT rowid FROM batches WHERE id = ?)"
            params.append(after)
        rows = self._db.rows(query + " ORDER BY rowid DESC LIMIT ?", (*params, limit))
        return [self._with_counts(json.loads(row[0])) for row in rows]

    def update(self, batch_id: str, only_from: tuple[str, ...] | None = None, **fields) -> dict:
        """Write `fields` into the batch object (its status column too), only while its status is one of
        `only_from` when given; the object as it now is, changed or not."""
        with self._db.transaction() as db:
            batch = json.loads(db.execute("SELECT batch FROM batches WHERE id = ?", (batch_id,)).fetchone()[0])
            if only_from is None or batch["status"] in only_from:
                batch.update(fields)
                db.execute("UPDATE batches SET status = ?, batch = ? WHERE id = ?",
                           (batch["status"], json.dumps(batch), batch_id))
        return self._with_counts(batch)

    def unfinished(self) -> list[str]:
        """Batches a restart must take up again, oldest first."""
        marks = ", ".join("?" * len(UNFINISHED))
        return [row[0] for row in self._db.rows(
            f"SELECT id FROM batches WHERE status IN ({marks}) ORDER BY rowid", UNFINISHED)]

    def using_input(self, file_id: str) -> str | None:
        """An unfinished batch reading `file_id`, if any."""
        marks = ", ".join("?" * len(UNFINISHED))
        rows = self._db.rows(f"SELECT id FROM batches WHERE status IN ({marks}) AND "
                             "json_extract(batch, '$.input_file_id') = ? LIMIT 1", (*UNFINISHED, file_id))
        return rows[0][0] if rows else None

    def record(self, batch_id: str, result: LineResult) -> None:
        with self._db.transaction() as db:
            db.execute("INSERT OR IGNORE INTO batch_lines VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       (batch_id, result.line, int(result.succeeded), json.dumps(result.output),
                        result.input_tokens, result.output_tokens, result.num_images, result.cost))

    def answered_lines(self, batch_id: str) -> set[int]:
        return {row[0] for row in self._db.rows("SELECT line FROM batch_lines WHERE batch_id = ?", (batch_id,))}

    def outputs(self, batch_id: str, succeeded: bool) -> list[str]:
        """The output lines (JSON text) of the answered lines that succeeded, or of those that failed, in input
        order."""
        return [row[0] for row in self._db.rows(
            "SELECT output FROM batch_lines WHERE batch_id = ? AND succeeded = ? ORDER BY line",
            (batch_id, int(succeeded)))]

    def _with_counts(self, batch: dict) -> dict:
        (completed, failed, input_tokens, output_tokens, num_images, cost), = self._db.rows(
            "SELECT COALESCE(SUM(succeeded), 0), COALESCE(SUM(1 - succeeded), 0), COALESCE(SUM(input_tokens), 0), "
            "COALESCE(SUM(output_tokens), 0), COALESCE(SUM(num_images), 0), COALESCE(SUM(cost), 0) "
            "FROM batch_lines WHERE batch_id = ?", (batch["id"],))
        total = batch["request_counts"]["total"]
        return {**batch, "request_counts": {"completed": completed, "failed": failed, "total": total},
                "usage": {"input_tokens": input_tokens, "input_tokens_details": {"cached_tokens": 0},
                          "output_tokens": output_tokens, "output_tokens_details": {"reasoning_tokens": 0},
                          "total_tokens": input_tokens + output_tokens, "num_images": num_images, "cost": cost}}
