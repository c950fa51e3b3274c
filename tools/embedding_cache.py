"""On-disk embedding cache: one SQLite file per embedder, rows keyed by sha256 of the text.

Vectors are stored as float32 blobs. Writes happen in transactions (an interrupted run keeps
every batch it committed, never a half row); WAL mode lets several readers share the file.
"""
from __future__ import annotations

import hashlib
import os
import re
import sqlite3
from pathlib import Path

import numpy as np


def default_cache_dir() -> Path:
    """``$TISSUETALK_CACHE/embeddings`` or ``~/.cache/tissuetalk/embeddings``."""
    root = os.environ.get("TISSUETALK_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "tissuetalk"
    return base / "embeddings"


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def cache_file(cache_dir: Path, name: str) -> Path:
    """A file name that is safe on every OS and unique per embedder name."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:60].strip("_") or "embedder"
    return Path(cache_dir) / f"{slug}-{hashlib.sha256(name.encode()).hexdigest()[:12]}.sqlite"


class EmbeddingCache:
    """Persistent map text-hash -> float32 vector for one embedder."""

    def __init__(self, cache_dir: str | os.PathLike | None, name: str):
        self.dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.path = cache_file(self.dir, name)
        with self._connect() as con:
            con.execute("CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT)")
            con.execute("CREATE TABLE IF NOT EXISTS emb (h TEXT PRIMARY KEY, dim INTEGER, v BLOB)")
            con.execute("INSERT OR IGNORE INTO meta VALUES ('embedder', ?)", (name,))

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=60)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=NORMAL")
        return con

    def get(self, hashes: list[str]) -> dict[str, np.ndarray]:
        """Vectors for the hashes that are stored; missing ones are simply absent."""
        out: dict[str, np.ndarray] = {}
        con = self._connect()
        try:
            for i in range(0, len(hashes), 500):  # stay under SQLite's variable limit
                chunk = hashes[i:i + 500]
                q = f"SELECT h, v FROM emb WHERE h IN ({','.join('?' * len(chunk))})"
                for h, blob in con.execute(q, chunk):
                    out[h] = np.frombuffer(blob, dtype=np.float32)
        finally:
            con.close()
        return out

    def put(self, hashes: list[str], vectors: np.ndarray) -> None:
        """Store one batch in a single transaction."""
        vectors = np.asarray(vectors, dtype=np.float32)
        rows = [(h, int(v.shape[0]), v.tobytes()) for h, v in zip(hashes, vectors)]
        con = self._connect()
        try:
            with con:
                con.executemany("INSERT OR REPLACE INTO emb VALUES (?, ?, ?)", rows)
        finally:
            con.close()

    def any_dim(self) -> int | None:
        """The dimension of any stored vector, or None when the cache is empty."""
        con = self._connect()
        try:
            row = con.execute("SELECT dim FROM emb LIMIT 1").fetchone()
        finally:
            con.close()
        return int(row[0]) if row else None

    def __len__(self) -> int:
        con = self._connect()
        try:
            return int(con.execute("SELECT COUNT(*) FROM emb").fetchone()[0])
        finally:
            con.close()
