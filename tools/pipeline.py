"""The spatial-domain pipeline (ST-LLM style) as one call: preprocess -> spatial graph ->
[adjacency refinement] -> [prompts -> text embeddings] -> features -> domains.

Each stage is one of the typed tools; this module only chains them and times the stages.
"""
from __future__ import annotations

import time
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from tools.domains import DomainParams, find_domains
from tools.errors import ParameterError


class PipelineParams(BaseModel):
    n_domains: int = Field(7, ge=2, le=50, description="number of spatial domains")
    method: Literal["gmm", "kmeans", "leiden"] = Field("gmm", description="clustering method")
    prompt: Literal["none", "stllm", "qr", "se", "rag"] = Field(
        "none", description="ST-LLM prompt variant to embed, or none (expression only)")
    embedder: str = Field("minilm", description="embedder spec for the prompts")
    text_weight: float = Field(1.0, ge=0.0, le=1.0, description="with a prompt: weight of the "
                               "text embedding against expression PCA (1 = text only)")
    refine_graph: bool = Field(False, description="refine the adjacency with ST-LLM's Q(A) search")
    smooth_rounds: int = Field(2, ge=0, le=10, description="rounds of neighbour smoothing")
    refine: Literal["none", "hmrf", "majority"] = Field("hmrf", description="label refinement")
    n_top_genes: int = Field(3000, ge=50, le=50000, description="highly variable genes")
    n_comps: int = Field(30, ge=2, le=200, description="principal components")
    label_key: str | None = Field(None, description="obs column to score against")
    seed: int = Field(0, ge=0, description="random seed")
    descriptions: dict[str, str] | None = Field(None, description="gene descriptions for 'rag'")


def run_domain_pipeline(adata, p: PipelineParams, *, progress: bool = False) -> dict:
    """Run every stage on `adata` (modified in place); returns scores and per-stage seconds."""
    from tools.data import PreprocessParams, preprocess
    from tools.graph import GraphParams, build_graph

    stages: dict[str, float] = {}

    def timed(name, fn, *a, **kw):
        t = time.perf_counter()
        out = fn(*a, **kw)
        stages[name] = round(time.perf_counter() - t, 3)
        return out

    if p.n_domains > adata.n_obs:
        raise ParameterError(f"--n-domains {p.n_domains} is more than the {adata.n_obs} spots")
    timed("preprocess", preprocess, adata,
          PreprocessParams(n_top_genes=min(p.n_top_genes, adata.n_vars), n_comps=p.n_comps))
    grid = "array_row" in adata.obs and "array_col" in adata.obs
    timed("graph", build_graph, adata, GraphParams(method="grid" if grid else "knn", n_neighs=6))
    adjacency = "spatial_connectivities"
    if p.refine_graph:
        from tools.adjacency import RefineParams, refine_adjacency

        timed("refine_graph", refine_adjacency, adata, RefineParams(seed=p.seed))
        adjacency = "stllm_adjacency"
    embedding = "X_pca"
    if p.prompt != "none":
        from tools.embedding import EmbedParams, embed_prompts
        from tools.serialise import PromptParams, serialise_prompts

        timed("prompts", serialise_prompts, adata,
              PromptParams(variant=p.prompt, adjacency_key=adjacency, descriptions=p.descriptions))
        timed("embed", embed_prompts, adata, EmbedParams(embedder=p.embedder), progress=progress)
        embedding = timed("features", text_features, adata, p.text_weight, p.n_comps, p.seed)
    res = timed("domains", find_domains, adata, DomainParams(
        n_domains=p.n_domains, method=p.method, embedding=embedding,
        smooth_rounds=p.smooth_rounds, adjacency=adjacency, refine=p.refine,
        label_key=p.label_key, seed=p.seed))
    return {"ari": res.ari, "ami": res.ami, "nmi": res.nmi, "n_spots": int(adata.n_obs),
            "n_scored": res.n_scored, "sizes": res.sizes, "embedding": embedding,
            "stages": stages}


def text_features(adata, text_weight: float, n_comps: int, seed: int = 0) -> str:
    """PCA of the text embedding, optionally concatenated with expression PCA; both blocks are
    scaled to unit total variance first. Writes obsm['X_stllm']; returns that key."""
    from sklearn.decomposition import PCA

    T = np.asarray(adata.obsm["X_text"], dtype=np.float64)
    T = PCA(min(n_comps, T.shape[1], T.shape[0] - 1), random_state=seed).fit_transform(T)
    blocks = [np.sqrt(text_weight) * T / np.sqrt(T.var(0).sum())]
    if text_weight < 1.0:
        E = np.asarray(adata.obsm["X_pca"], dtype=np.float64)[:, :n_comps]
        blocks.append(np.sqrt(1 - text_weight) * E / np.sqrt(E.var(0).sum()))
    adata.obsm["X_stllm"] = np.hstack(blocks)
    return "X_stllm"
