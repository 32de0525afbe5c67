"""Reading the index from a small thread pool, for every reader of the store.

`IndexReader` runs queries on a small thread pool, each thread with its own
read-only SQLite connection: sessions (IMAP, POP3, the webmail) do not own
connections (a connection costs far more memory than an idle IMAP session
may), and a big query does not stall the event loop. The store's writer
thread has the only writing connection (store.py).
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class IndexReader:
    def __init__(self, index_path: Path, threads: int = 2) -> None:
        self.index_path = index_path
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="index-reader")
        self._local = threading.local()

    def _con(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = sqlite3.connect(
                f"file:{self.index_path}?mode=ro", uri=True, check_same_thread=False, timeout=30
            )
            con.execute("PRAGMA query_only=1")
            # Small page caches: the kernel's page cache holds the file anyway,
            # and each cached page here is RSS (a Pi Zero has 512 MB).
            con.execute("PRAGMA cache_size=-1024")
            self._local.con = con
        return con

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """fn(connection, *args) on a reader thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: fn(self._con(), *args))

    def close(self) -> None:
        self._pool.shutdown(wait=True)
