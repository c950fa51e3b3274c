"""Atomic writes: results go to new files via a temp file + rename, never over user input."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp"):
    """Yield a temporary path beside `path`; on success it replaces `path`, on error it is removed.
    `suffix` matters to writers that choose a format by extension (".h5ad", ".png")."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_h5ad(adata, path: str | Path) -> Path:
    """Write `adata` to `path` atomically."""
    with atomic_path(path, ".h5ad") as tmp:
        adata.write_h5ad(tmp)
    return Path(path)
