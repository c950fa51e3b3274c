"""Typed errors every tool raises; the CLI prints them as one line and the agent returns them
to the model as tool messages."""


class TissueTalkError(Exception):
    """Base class: a problem the user (or the model) can fix; the message names it."""


class DataError(TissueTalkError):
    """The input data is unreadable or invalid (missing coordinates, NaN counts, ...)."""


class UnknownKeyError(TissueTalkError):
    """An obs/obsm/var key, gene, cell type or dataset id that does not exist."""


class ParameterError(TissueTalkError):
    """A parameter value that cannot work with this data (e.g. more domains than spots)."""


class BackendError(TissueTalkError):
    """An external model or service failed (embedding model, chat model, ...)."""


def suggest(name: str, choices, n: int = 3) -> str:
    """' (did you mean: a, b?)' for the closest of `choices`, or ''."""
    import difflib

    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=n, cutoff=0.6)
    return f" (did you mean: {', '.join(close)}?)" if close else ""


def require_obs(adata, key: str) -> None:
    if key not in adata.obs:
        raise UnknownKeyError(f"obs column '{key}' not found{suggest(key, adata.obs.columns)}")


def require_obsm(adata, key: str) -> None:
    if key not in adata.obsm:
        raise UnknownKeyError(
            f"obsm key '{key}' not found (available: {', '.join(adata.obsm) or 'none'})"
        )
