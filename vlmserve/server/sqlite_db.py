"""One SQLite database under the server's data directory, shared by the preparation threads behind a lock.

WAL journaling, and every write in a transaction that commits before the call returns: what a store reports
saved survives a crash of the server. Calls block on disk: the server runs them on its preparation threads.
"""

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class Database:
    def __init__(self, data_dir: str | Path, file_name: str, schema: str):
        Path(data_dir).mkdir(parents=True, exist_ok=True)
        self.path = Path(data_dir) / file_name
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(schema)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """The connection, alone, inside one transaction: committed when the block ends, rolled back if it raises."""
        with self._lock, self._db:
            yield self._db

    def rows(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def close(self) -> None:
        with self._lock:
            self._db.close()
