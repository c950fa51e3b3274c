"""The tools the agent offers: every registered tool of `tools/` plus two workspace tools
(load / list datasets). Validates arguments, runs a tool against the session workspace and
logs the call; failures come back as a step record, never as an exception."""
from __future__ import annotations

import importlib
import json
import os
import time
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

from tools.errors import TissueTalkError, UnknownKeyError, suggest
from tools.registry import REGISTRY, TOOL_MODULES, ToolSpec


class LoadParams(BaseModel):
    path: str = Field(description="path of an .h5ad file under an allowed data folder")
    name: str | None = Field(None, description="dataset id to give it (default: 'data' for the "
                                               "first dataset, else the file name)")


class LoadResult(BaseModel):
    dataset: str
    n_obs: int
    n_vars: int


class ListParams(BaseModel):
    pass


class ListResult(BaseModel):
    datasets: dict[str, list[int]]


def _load(session, p: LoadParams) -> LoadResult:
    """Load an AnnData (.h5ad) file into the session workspace under a dataset id."""
    name = session.load_dataset(p.path, p.name)
    n_obs, n_vars = session.get(name).shape
    return LoadResult(dataset=name, n_obs=n_obs, n_vars=n_vars)


def _list(session, p: ListParams) -> ListResult:
    """List the datasets loaded in this session with their shapes (observations, genes)."""
    return ListResult(datasets={k: v["shape"] for k, v in session.meta["datasets"].items()})


WORKSPACE_TOOLS = {
    "load_dataset": ToolSpec("load_dataset", _load, LoadParams, LoadResult, _load.__doc__,
                             ("load", "open the file", "read the file"), needs_data=False,
                             extra={"session": True}),
    "list_datasets": ToolSpec("list_datasets", _list, ListParams, ListResult, _list.__doc__,
                              ("list datasets", "which datasets", "loaded datasets"),
                              needs_data=False, extra={"session": True}),
}


def discover() -> tuple[dict[str, ToolSpec], dict[str, str]]:
    """Import every tool module (TOOL_MODULES plus $TISSUETALK_TOOL_MODULES, comma-separated);
    return (tools by name, {module: error}) — a module that fails to import is reported."""
    mods = list(TOOL_MODULES)
    mods += [m.strip() for m in os.environ.get("TISSUETALK_TOOL_MODULES", "").split(",") if m.strip()]
    errors = {}
    for mod in mods:
        try:
            importlib.import_module(mod)
        except Exception as e:  # a broken module must not take the agent down
            errors[mod] = f"{type(e).__name__}: {e}"
    tools = dict(WORKSPACE_TOOLS)
    if "load_data" in REGISTRY:  # tools.data's loader replaces the built-in one
        tools.pop("load_dataset")
    return {**tools, **REGISTRY}, errors


def path_fields(params: type[BaseModel]) -> list[str]:
    """Parameters that name a file to read (by name, or a description that says path / file)."""
    out = []
    for name, f in params.model_fields.items():
        desc = (f.description or "").lower()
        if name == "path" or name.endswith(("_path", "_file")) or "path" in desc.split() or " file" in desc:
            if "str" in str(f.annotation):
                out.append(name)
    return out


def langchain_tools(specs: dict[str, ToolSpec]) -> list:
    """LangChain tools (args_schema = the tool's parameter model) for model.bind_tools()."""
    from langchain_core.tools import StructuredTool

    def _not_here(**kw):  # the agent's executor runs tools, not LangChain
        raise RuntimeError("executed by agent.toolset.execute")

    return [StructuredTool.from_function(func=_not_here, name=s.name, description=s.summary,
                                         args_schema=s.params) for s in specs.values()]


def format_validation(name: str, e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err.get("loc", ())) or "arguments"
        parts.append(f"{loc}: {err['msg']} (got {err.get('input')!r})"[:300])
    return f"invalid arguments for {name}: " + "; ".join(parts)


def find_artefacts(result, session) -> list[str]:
    """Paths (relative to the session) of files named anywhere in a result."""
    found: list[str] = []

    def walk(v):
        if isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, (list, tuple)):
            for x in v:
                walk(x)
        elif isinstance(v, str) and 0 < len(v) < 400 and "\n" not in v:
            for cand in (session.artefacts / v, Path(v)):
                try:
                    if cand.is_file():
                        c = cand.resolve()
                        if c.is_relative_to(session.dir):
                            found.append(str(c.relative_to(session.dir)))
                        break
                except OSError:
                    pass

    walk(result)
    return list(dict.fromkeys(found))


def execute(session, specs: dict[str, ToolSpec], name: str, args: dict | None,
            *, call_id: str = "") -> dict:
    """Validate and run one tool call; returns the step record (also logged to provenance)."""
    step = {"id": call_id, "name": name, "args": args or {}, "ok": False, "seconds": 0.0,
            "result": None, "error": None, "artefacts": []}
    spec = specs.get(name)
    t0 = time.perf_counter()
    dataset = None
    try:
        if spec is None:
            raise UnknownKeyError(f"no tool named '{name}'{suggest(name, specs)}")
        if not isinstance(args, dict):
            raise TypeError("arguments must be a JSON object")
        try:
            p = spec.params.model_validate(args)
        except ValidationError as e:
            step["error"] = format_validation(name, e)
            return step
        kw = {"workdir": session.artefacts} if spec.writes_files else {}
        if not spec.extra.get("session"):
            for f in path_fields(spec.params):  # only files under the allowed roots are read
                if getattr(p, f, None):
                    session.check_path(getattr(p, f))
        if spec.extra.get("session"):
            res = spec.func(session, p)
        elif spec.needs_data:
            dataset = getattr(p, "dataset", None) or (session.dataset_ids or ["data"])[0]
            res = spec.func(session.get(dataset), p, **kw)
        else:
            res = spec.func(p, **kw)
        if isinstance(res, tuple) and len(res) == 2 and hasattr(res[0], "obs"):
            adata, res = res  # a loader: the AnnData goes to the workspace, the model sees res
            dataset = session.add_dataset(getattr(res, "dataset", None) or getattr(p, "name", None)
                                          or "data", adata, source=getattr(p, "path", None))
        step["result"] = res.model_dump(mode="json") if isinstance(res, BaseModel) else res
        if dataset is not None:
            session.save_dataset(dataset)
        step["ok"] = True
        step["artefacts"] = find_artefacts(step["result"], session)
    except TissueTalkError as e:
        step["error"] = f"{type(e).__name__}: {e}"
    except KeyboardInterrupt:
        step["error"] = "interrupted: the tool was stopped before it finished; nothing was saved"
        step["interrupted"] = True
    except Exception as e:  # unexpected failure inside a tool: report it, keep the session
        step["error"] = f"unexpected {type(e).__name__} in {name}: {e}"
    finally:
        step["seconds"] = round(time.perf_counter() - t0, 3)
        if not step["ok"] and dataset is not None:
            session.discard(dataset)  # drop half-made in-memory changes
        log_step(session, step)
    return step


def log_step(session, step: dict) -> None:
    """One provenance line: tool, arguments, seconds, result summary, error."""
    session.log({"tool": step["name"], **{k: step[k] for k in ("args", "ok", "seconds", "result", "error")}})


def tool_message_text(step: dict, limit: int = 4000) -> str:
    """What the model sees: the small result as JSON, or the error."""
    if step["ok"]:
        text = json.dumps(step["result"], default=str)
    else:
        text = f"error: {step['error']}"
    return text if len(text) <= limit else text[:limit] + " ...(truncated)"
