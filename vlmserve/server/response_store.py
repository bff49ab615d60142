"""Stored responses (the Responses API's `store` and `previous_response_id`), in SQLite under the server's data
directory, so a conversation continues across requests and server restarts.

Each record keeps the response object as answered and the conversation that led to it as chat messages (the
input items, earlier stored turns included, then the answer), without the instructions, which OpenAI does not
carry over. Retention: records older than `max_age_s` and those past the newest `max_responses` are deleted
whenever one is saved. Calls block on disk: the server runs them on its preparation threads.
"""

import json
import time
from dataclasses import dataclass
from pathlib import Path

from vlmserve.server.sqlite_db import Database

DEFAULT_MAX_RESPONSES = 10_000
DEFAULT_RETENTION_DAYS = 30.0  # how long OpenAI keeps stored responses
FILE_NAME = "responses.sqlite3"

_SCHEMA = """CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY, created_at REAL NOT NULL, conversation TEXT NOT NULL, response TEXT NOT NULL)"""


@dataclass(frozen=True)
class StoredResponse:
    conversation: list[dict]  # chat messages: every turn up to and including this response's answer
    response: dict  # the response object as it was answered


class ResponseStore:
    def __init__(self, data_dir: str | Path, max_responses: int = DEFAULT_MAX_RESPONSES,
                 max_age_s: float = DEFAULT_RETENTION_DAYS * 86400):
        if max_responses < 1 or max_age_s <= 0:
            raise ValueError(f"the response store keeps at least one response for some time; got max_responses="
                             f"{max_responses}, max_age_s={max_age_s}")
        self.max_responses, self.max_age_s = max_responses, max_age_s
        self._db = Database(data_dir, FILE_NAME, _SCHEMA)
        self.path = self._db.path

    def save(self, response_id: str, conversation: list[dict], response: dict) -> None:
        now = time.time()
        with self._db.transaction() as db:
            db.execute("INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?)",
                       (response_id, now, json.dumps(conversation), json.dumps(response)))
            db.execute("DELETE FROM responses WHERE created_at < ?", (now - self.max_age_s,))
            db.execute("DELETE FROM responses WHERE id NOT IN (SELECT id FROM responses ORDER BY created_at "
                       "DESC LIMIT ?)", (self.max_responses,))

    def load(self, response_id: str) -> StoredResponse | None:
        """The record, or None if it was never stored, was deleted or is past retention."""
        rows = self._db.rows("SELECT conversation, response FROM responses WHERE id = ? AND created_at >= ?",
                             (response_id, time.time() - self.max_age_s))
        return StoredResponse(json.loads(rows[0][0]), json.loads(rows[0][1])) if rows else None

    def delete(self, response_id: str) -> bool:
        with self._db.transaction() as db:
            return db.execute("DELETE FROM responses WHERE id = ?", (response_id,)).rowcount > 0

    def close(self) -> None:
        self._db.close()
