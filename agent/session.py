"""A session: a directory with the loaded datasets, artefacts, a provenance log and the
LangGraph checkpoint, so a conversation can be resumed after the process stops.

Layout::

    <dir>/session.json        id, model spec, datasets {id: {"file", "source"}}
    <dir>/datasets/<id>.h5ad  working copies (written atomically; user files are never touched)
    <dir>/artefacts/          figures and other files the tools write
    <dir>/reports/            Markdown + HTML report per request
    <dir>/provenance.jsonl    one line per tool call
    <dir>/checkpoint.sqlite   LangGraph checkpoint (thread id = session id)
"""
from __future__ import annotations

import json
import os
import re
import secrets
import time
from pathlib import Path

from tools.errors import DataError, UnknownKeyError, suggest
from tools.io import write_h5ad, write_text


def sessions_home() -> Path:
    """Where sessions live by default: $TISSUETALK_HOME/sessions or ~/.tissuetalk/sessions."""
    home = os.environ.get("TISSUETALK_HOME")
    return (Path(home) if home else Path.home() / ".tissuetalk") / "sessions"


def new_session_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


def _slug(name: str) -> str:
    s = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_")
    return s or "data"


class Session:
    """Workspace of one conversation: datasets by id, artefacts, provenance, checkpoint."""

    def __init__(self, path: str | os.PathLike, *, extra_roots=()):
        self.dir = Path(path).expanduser().resolve()
        self.id = self.dir.name
        for sub in ("datasets", "artefacts", "reports"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        self.meta_path = self.dir / "session.json"
        self.meta = (json.loads(self.meta_path.read_text()) if self.meta_path.exists()
                     else {"id": self.id, "created": time.time(), "datasets": {}, "roots": []})
        self.meta.setdefault("roots", [])
        for r in extra_roots:
            self.allow(r)
        self._adata: dict = {}
        self._save_meta()

    # ---- opening ---------------------------------------------------------------------------
    @classmethod
    def open(cls, session_dir=None, resume: str | None = None, extra_roots=()) -> "Session":
        """A new session (in `session_dir` or the default home) or, with `resume`, an existing one."""
        if resume:
            p = Path(resume).expanduser()
            cand = p if p.is_dir() else (Path(session_dir) if session_dir else sessions_home() / resume)
            if not (cand / "session.json").exists():
                raise UnknownKeyError(f"no session '{resume}' (looked in {cand})")
            return cls(cand, extra_roots=extra_roots)
        path = Path(session_dir) if session_dir else sessions_home() / new_session_id()
        return cls(path, extra_roots=extra_roots)

    @property
    def artefacts(self) -> Path:
        return self.dir / "artefacts"

    @property
    def checkpoint_path(self) -> Path:
        return self.dir / "checkpoint.sqlite"

    def _save_meta(self) -> None:
        write_text(self.meta_path, json.dumps(self.meta, indent=1))

    # ---- allowed roots ---------------------------------------------------------------------
    def allow(self, path) -> None:
        """Allow reading datasets from `path` (a file or folder given on the command line)."""
        p = str(Path(path).expanduser().resolve())
        if p not in self.meta["roots"]:
            self.meta["roots"].append(p)

    def allowed_roots(self) -> list[Path]:
        roots = [Path.cwd().resolve(), self.dir]
        env = os.environ.get("TISSUETALK_DATA")
        if env:
            roots += [Path(r).expanduser().resolve() for r in env.split(os.pathsep) if r]
        return roots + [Path(r) for r in self.meta["roots"]]

    def check_path(self, path) -> Path:
        """Resolve `path`; reject it unless it lies under an allowed root."""
        p = Path(path).expanduser()
        p = (p if p.is_absolute() else Path.cwd() / p).resolve()
        if not any(p == r or p.is_relative_to(r) for r in self.allowed_roots()):
            raise DataError(
                f"path '{path}' is outside the allowed data folders (the current directory, the "
                "session directory, $TISSUETALK_DATA and paths given with --data); "
                "pass it with --data or set TISSUETALK_DATA")
        if not p.exists():
            raise DataError(f"dataset file '{path}' does not exist")
        return p

    # ---- datasets --------------------------------------------------------------------------
    @property
    def dataset_ids(self) -> list[str]:
        return list(self.meta["datasets"])

    def load_dataset(self, path, name: str | None = None) -> str:
        """Read an .h5ad file into the session under id `name`; returns the id."""
        src = self.check_path(path)
        try:
            from tools.data import read_dataset
        except ImportError:
            read_dataset = None
        if read_dataset is not None:
            adata = read_dataset(src)  # .h5ad, Visium folders, tables; raises DataError
        else:
            import anndata as ad

            try:
                adata = ad.read_h5ad(src)
            except Exception as e:  # unreadable file: name it
                raise DataError(f"cannot read '{src.name}' as AnnData: {e}") from None
        if name is None:
            name = "data" if not self.meta["datasets"] else _slug(src.stem)
        return self.add_dataset(name, adata, source=str(src))

    def add_dataset(self, name: str, adata, source=None) -> str:
        """Keep `adata` in the workspace under `name` (saved to datasets/<name>.h5ad)."""
        name = _slug(name)
        self._adata[name] = adata
        self.meta["datasets"][name] = {"file": f"datasets/{name}.h5ad", "source": str(source),
                                       "shape": list(adata.shape)}
        self.save_dataset(name)
        return name

    def get(self, name: str):
        """The AnnData of dataset `name` (loaded lazily from the session copy)."""
        if name not in self.meta["datasets"]:
            known = ", ".join(self.dataset_ids) or "none loaded"
            raise UnknownKeyError(
                f"dataset '{name}' is not loaded in this session (loaded: {known})"
                f"{suggest(name, self.dataset_ids)}")
        if name not in self._adata:
            import anndata as ad

            self._adata[name] = ad.read_h5ad(self.dir / self.meta["datasets"][name]["file"])
        return self._adata[name]

    def discard(self, name: str) -> None:
        """Forget in-memory changes to `name`; the next get() re-reads the saved copy."""
        self._adata.pop(name, None)

    def save_dataset(self, name: str) -> None:
        """Write the working copy of `name` atomically (temp file, then os.replace)."""
        adata = self._adata[name]
        dest = self.dir / self.meta["datasets"][name]["file"]
        write_h5ad(adata, dest)
        self.meta["datasets"][name]["shape"] = list(adata.shape)
        self._save_meta()

    # ---- provenance ------------------------------------------------------------------------
    def log(self, record: dict) -> None:
        """Append one JSON line to provenance.jsonl."""
        line = json.dumps({"time": time.time(), **record}, default=str)
        with open(self.dir / "provenance.jsonl", "a", encoding="utf-8") as f:
            f.write(line + "\n")

    def provenance(self) -> list[dict]:
        p = self.dir / "provenance.jsonl"
        if not p.exists():
            return []
        return [json.loads(x) for x in p.read_text(encoding="utf-8").splitlines() if x.strip()]

    def set_meta(self, **kw) -> None:
        self.meta.update(kw)
        self._save_meta()

    def checkpointer(self):
        """A LangGraph SqliteSaver on checkpoint.sqlite."""
        import sqlite3

        from langgraph.checkpoint.sqlite import SqliteSaver

        conn = sqlite3.connect(self.checkpoint_path, check_same_thread=False)
        return SqliteSaver(conn)
