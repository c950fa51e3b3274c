"""Every text template of tissuetalk, as files in this folder; `load(name)` reads one."""
from functools import lru_cache
from pathlib import Path

HERE = Path(__file__).parent


@lru_cache(maxsize=None)
def load(name: str) -> str:
    path = HERE / (name if "." in name else f"{name}.txt")
    if not path.is_file():
        raise FileNotFoundError(f"no prompt template '{name}' in {HERE}")
    return path.read_text(encoding="utf-8")
