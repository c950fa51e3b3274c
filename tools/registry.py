"""The tool registry: name -> function, parameter model, result model and planner intents.

Each module registers its tools with :func:`register`; the agent exposes every registered tool
with its parameter schema, and the offline planner matches requests against ``intents``
(keyword phrases kept here, next to the tool, so adding a tool means adding its intent).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from pydantic import BaseModel


@dataclass(frozen=True)
class ToolSpec:
    name: str
    func: Callable
    params: type[BaseModel]
    result: type[BaseModel]
    summary: str
    intents: tuple[str, ...] = ()
    needs_data: bool = True  # first argument is an AnnData resolved from params.dataset
    writes_files: bool = False  # accepts workdir= for figures / artefacts
    extra: dict = field(default_factory=dict)
    # then(args, result) -> {"name", "args"} | None: the step the offline planner adds after a
    # successful call (e.g. the spatial map after find_domains)
    then: Callable | None = None


REGISTRY: dict[str, ToolSpec] = {}

# Modules that register tools; imported lazily by all_tools() so `tissuetalk --help` stays fast.
TOOL_MODULES = (
    "tools.data",
    "tools.describe",
    "tools.graph",
    "tools.adjacency",
    "tools.serialise",
    "tools.embedding",
    "tools.domains",
    "tools.plots",
    "tools.markers",
    "tools.composition",
    "tools.enrichment",
    "tools.communication",
    "tools.proximity",
    "tools.knowledge",
    "tools.gene_embeddings",
    "tools.sentences",
    "tools.generation",
    "tools.perturbation",
)


def register(name: str, params: type[BaseModel], result: type[BaseModel], *, intents=(),
             needs_data: bool = True, writes_files: bool = False, then: Callable | None = None):
    def deco(func: Callable) -> Callable:
        summary = (func.__doc__ or name).strip().splitlines()[0]
        REGISTRY[name] = ToolSpec(name, func, params, result, summary, tuple(intents),
                                  needs_data, writes_files, then=then)
        return func

    return deco


def all_tools() -> dict[str, ToolSpec]:
    import importlib

    for mod in TOOL_MODULES:
        importlib.import_module(mod)
    return REGISTRY
