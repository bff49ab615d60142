"""Stored responses (the Responses API's `store` and `previous_response_id`), in SQLite under the server's data
directory, so a conversation continues across requests and server restarts.

Each record keeps the response object as answered and the conversation that led to it as chat messages (the
input items, earlier stored turns included, then the answer), without the instructions, which OpenAI does not
carry over. Retention: records older than `max_age_s` and those past the newest `max_responses` are deleted
whenever one is saved. Calls block on disk: the server runs them on its preparation threads.
"""

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

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
        Path(data_dir).mkdir(parents=True, exist_ok=True)
        self.path = Path(data_dir) / FILE_NAME
        self.max_responses, self.max_age_s = max_responses, max_age_s
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(_SCHEMA)

    def save(self, response_id: str, conversation: list[dict], response: dict) -> None:
        now = time.time()
        with self._lock, self._db:
            self._db.execute("INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?)",
                             (response_id, now, json.dumps(conversation), json.dumps(response)))
            self._db.execute("DELETE FROM responses WHERE created_at < ?", (now - self.max_age_s,))
            self._db.execute("DELETE FROM responses WHERE id NOT IN (SELECT id FROM responses ORDER BY created_at "
                             "DESC LIMIT ?)", (self.max_responses,))

    def load(self, response_id: str) -> StoredResponse | None:
        """The record, or None if it was never stored, was deleted or is past retention."""
        with self._lock:
            row = self._db.execute("SELECT conversation, response FROM responses WHERE id = ? AND created_at >= ?",
                                   (response_id, time.time() - self.max_age_s)).fetchone()
        return None if row is None else StoredResponse(json.loads(row[0]), json.loads(row[1]))

    def delete(self, response_id: str) -> bool:
        with self._lock, self._db:
            return self._db.execute("DELETE FROM responses WHERE id = ?", (response_id,)).rowcount > 0

    def close(self) -> None:
        with self._lock:
            self._db.close()
