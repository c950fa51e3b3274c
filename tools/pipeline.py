"""The spatial-domain pipeline (ST-LLM style) as one call: preprocess -> spatial graph ->
[adjacency refinement] -> [prompts -> text embeddings] -> features -> domains.

Each stage is one of the typed tools; this module only chains them, times the stages and caches
the expression stage (preprocess + spatial graph: the slow part of a cold run) on disk, keyed by
a hash of the whole input AnnData and the stage parameters, under ``$TISSUETALK_CACHE/pipeline``
(default ``~/.cache/tissuetalk/pipeline``); serialised prompts likewise under ``prompts/``.
Text embeddings have their own cache (:mod:`tools.embedding_cache`), so a warm run recomputes
only the adjacency refinement, clustering and figures.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import time
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from tools.domains import DomainParams, find_domains
from tools.errors import ParameterError

CACHE_VERSION = "expr-v1"  # bump when preprocess / build_graph change what they write


class PipelineParams(BaseModel):
    n_domains: int = Field(7, ge=2, le=50, description="number of spatial domains")
    method: Literal["gmm", "kmeans", "leiden"] = Field("gmm", description="clustering method")
    prompt: Literal["none", "stllm", "qr", "se", "rag"] = Field(
        "none", description="ST-LLM prompt variant to embed, or none (expression only)")
    embedder: str = Field("minilm", description="embedder spec for the prompts")
    text_weight: float = Field(1.0, ge=0.0, le=1.0, description="with a prompt: weight of the "
                               "text embedding against expression PCA (1 = text only)")
    refine_graph: bool = Field(False, description="refine the adjacency with ST-LLM's Q(A) search")
    graph_seed: int | None = Field(None, ge=0, description="seed of the adjacency refinement "
                                   "(None = seed); fixing it lets seeds vary only the clustering")
    smooth_rounds: int = Field(2, ge=0, le=10, description="rounds of neighbour smoothing")
    refine: Literal["none", "hmrf", "majority"] = Field("hmrf", description="label refinement")
    beta: float = Field(2.0, ge=0.0, le=10.0, description="Potts prior strength (refine='hmrf')")
    covariance: Literal["tied", "full", "diag"] = Field("tied", description="GMM covariance")
    n_top_genes: int = Field(3000, ge=50, le=50000, description="highly variable genes")
    n_comps: int = Field(30, ge=2, le=200, description="principal components")
    label_key: str | None = Field(None, description="obs column to score against")
    seed: int = Field(0, ge=0, description="random seed")
    descriptions: dict[str, str] | None = Field(None, description="gene descriptions for 'rag'")


def run_domain_pipeline(adata, p: PipelineParams, *, progress: bool = False,
                        cache: bool = True) -> dict:
    """Run every stage on `adata` (modified in place); returns scores and per-stage seconds.

    With ``cache`` the preprocessed, graph-bearing state is read from / written to the cache
    directory; the result's ``cache`` entry says "hit", "miss" or "off"."""
    from tools.data import PreprocessParams
    from tools.graph import GraphParams

    stages: dict[str, float] = {}

    def timed(name, fn, *a, **kw):
        t = time.perf_counter()
        out = fn(*a, **kw)
        stages[name] = round(time.perf_counter() - t, 3)
        return out

    if p.n_domains > adata.n_obs:
        raise ParameterError(f"--n-domains {p.n_domains} is more than the {adata.n_obs} spots")
    pre = PreprocessParams(n_top_genes=min(p.n_top_genes, adata.n_vars), n_comps=p.n_comps)
    grid = "array_row" in adata.obs and "array_col" in adata.obs
    gp = GraphParams(method="grid" if grid else "knn", n_neighs=6)
    from tools.domains import single_thread_blas

    with single_thread_blas():  # small dense algebra: faster on one thread on shared cores
        status = expression_stage(adata, pre, gp, cache=cache, stages=stages)
    if p.n_domains > adata.n_obs:  # QC filtering may have removed spots
        raise ParameterError(f"--n-domains {p.n_domains} is more than the {adata.n_obs} spots "
                             "left after quality filtering")
    adjacency = "spatial_connectivities"
    if p.refine_graph:
        from tools.adjacency import RefineParams, refine_adjacency

        seed = p.seed if p.graph_seed is None else p.graph_seed
        timed("refine_graph", refine_adjacency, adata, RefineParams(seed=seed))
        adjacency = "stllm_adjacency"
    embedding, prompt_status = "X_pca", None
    if p.prompt != "none":
        from tools.embedding import EmbedParams, embed_prompts
        from tools.serialise import PromptParams

        pp = PromptParams(variant=p.prompt, adjacency_key=adjacency, descriptions=p.descriptions)
        prompt_status = timed("prompts", prompt_stage, adata, pp, cache=cache)
        timed("embed", embed_prompts, adata, EmbedParams(embedder=p.embedder), progress=progress)
        embedding = timed("features", text_features, adata, p.text_weight, p.n_comps, p.seed)
    res = timed("domains", find_domains, adata, DomainParams(
        n_domains=p.n_domains, method=p.method, embedding=embedding,
        smooth_rounds=p.smooth_rounds, adjacency=adjacency, refine=p.refine, beta=p.beta,
        covariance=p.covariance, label_key=p.label_key, seed=p.seed))
    return {"ari": res.ari, "ami": res.ami, "nmi": res.nmi, "n_spots": int(adata.n_obs),
            "n_scored": res.n_scored, "sizes": res.sizes, "embedding": embedding,
            "adjacency": adjacency, "cache": status, "prompt_cache": prompt_status,
            "stages": stages}


def text_features(adata, text_weight: float, n_comps: int, seed: int = 0) -> str:
    """PCA of the text embedding; with text_weight < 1 combined with expression PCA: both blocks
    scaled to unit total variance, weighted by sqrt(w) and sqrt(1 - w), concatenated, and reduced
    by a joint PCA to n_comps. (The joint PCA is what makes the weight act: a Gaussian mixture
    with full or tied covariance is affine-invariant, so it ignores a block's scale in a plain
    concatenation.) Writes obsm['X_stllm']; returns that key."""
    from sklearn.decomposition import PCA

    T = np.asarray(adata.obsm["X_text"], dtype=np.float64)
    T = PCA(min(n_comps, T.shape[1], T.shape[0] - 1), random_state=seed).fit_transform(T)
    if text_weight >= 1.0:
        adata.obsm["X_stllm"] = T
        return "X_stllm"
    E = np.asarray(adata.obsm["X_pca"], dtype=np.float64)[:, :n_comps]
    Z = np.hstack([np.sqrt(text_weight) * T / np.sqrt(T.var(0).sum()),
                   np.sqrt(1 - text_weight) * E / np.sqrt(E.var(0).sum())])
    k = min(n_comps, Z.shape[1], Z.shape[0] - 1)
    adata.obsm["X_stllm"] = PCA(k, random_state=seed).fit_transform(Z)
    return "X_stllm"


def read_descriptions(path, genes=None) -> dict[str, str]:
    """gene symbol -> description for the 'rag' prompt, from NCBI gene-description JSON lines
    (``*.jsonl[.gz]``, as in knowledge/gene_descriptions: the RefSeq summary, else the official
    full name) or a two-column table (``.tsv`` / ``.csv``: gene, description). Only `genes`
    are kept when given."""
    import csv
    import gzip

    from tools.errors import DataError

    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"descriptions file not found: {path}")
    wanted = None if genes is None else {str(g) for g in genes}
    out: dict[str, str] = {}
    name = path.name.lower()
    if ".jsonl" in name or ".json" in name:
        from tools.ncbi import read_descriptions_jsonl

        for rec in read_descriptions_jsonl(path):
            s = rec["symbol"]
            if (wanted is None or s in wanted) and s not in out:
                text = rec.get("summary") or rec.get("official_full_name")
                if text:
                    out[s] = str(text)
    else:
        opener = gzip.open if name.endswith(".gz") else open
        try:
            with opener(path, "rt", newline="") as f:
                delim = "," if ".csv" in name else "\t"
                for row in csv.reader(f, delimiter=delim):
                    if len(row) >= 2 and row[0] and (wanted is None or row[0] in wanted):
                        out.setdefault(row[0], row[1])
        except (OSError, UnicodeDecodeError, csv.Error) as e:
            raise DataError(f"cannot read {path.name} as a gene,description table: {e}") from None
    if not out:
        raise DataError(f"{path.name} has no descriptions"
                        + (" for the genes of this dataset" if wanted is not None else ""))
    return out


# ---------------------------------------------------------------- expression-stage cache
def cache_root() -> Path:
    """``$TISSUETALK_CACHE`` or ``~/.cache/tissuetalk`` (the embedding cache's parent)."""
    root = os.environ.get("TISSUETALK_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "tissuetalk"


def _hash_matrix(h, X) -> None:
    import scipy.sparse as sp

    if sp.issparse(X):
        X = sp.csr_matrix(X)
        if not X.has_sorted_indices:
            X = X.sorted_indices()
        h.update(f"csr{X.shape}{X.dtype}".encode())
        for a in (X.data, X.indices, X.indptr):
            h.update(np.ascontiguousarray(a).tobytes())
    else:
        X = np.ascontiguousarray(np.asarray(X))
        h.update(f"dense{X.shape}{X.dtype}".encode())
        h.update(X.tobytes())


def data_fingerprint(adata) -> str | None:
    """sha256 of the whole input the expression stage sees: .X, layers, obs / var tables, spot
    and gene names, obsm, varm, obsp and uns. None when some part cannot be hashed (no caching)."""
    h = hashlib.sha256()
    try:
        _hash_matrix(h, adata.X)
        for attr in ("layers", "obsm", "varm", "obsp"):
            for k, v in sorted(getattr(adata, attr).items()):
                h.update(f"{attr}:{k}".encode())
                if isinstance(v, np.ndarray) or hasattr(v, "tocsr"):
                    _hash_matrix(h, v)
                else:
                    h.update(pickle.dumps(v, protocol=4))
        for frame in (adata.obs, adata.var):
            h.update(pickle.dumps(frame, protocol=4))
        h.update(pickle.dumps(dict(adata.uns), protocol=4))
    except Exception:  # an object that cannot be pickled: run without the cache
        return None
    return h.hexdigest()


def expression_stage(adata, pre, gp, *, cache: bool = True, stages: dict | None = None) -> str:
    """preprocess + build_graph on `adata` in place, through the on-disk cache.
    Returns "hit", "miss" or "off"."""
    from tools.data import preprocess
    from tools.graph import build_graph

    stages = {} if stages is None else stages
    path = None
    fp = data_fingerprint(adata) if cache else None
    if fp is not None:
        key = hashlib.sha256("|".join((
            CACHE_VERSION, fp, pre.model_dump_json(exclude={"dataset"}),
            gp.model_dump_json(exclude={"dataset"}))).encode()).hexdigest()[:32]
        path = cache_root() / "pipeline" / f"{key}.pkl"
        if path.exists():
            t = time.perf_counter()
            if _restore(adata, path):
                stages["restore"] = round(time.perf_counter() - t, 3)
                return "hit"
    t = time.perf_counter()
    preprocess(adata, pre)
    stages["preprocess"] = round(time.perf_counter() - t, 3)
    t = time.perf_counter()
    build_graph(adata, gp)
    stages["graph"] = round(time.perf_counter() - t, 3)
    if path is None:
        return "off"
    _store(adata, path)
    return "miss"


def _prompt_key(adata, pp) -> str:
    """Hash of what serialise_prompts reads: expression, genes, HVGs, coordinates, the graph,
    any stored Moran's I and the prompt settings (descriptions included)."""
    h = hashlib.sha256(CACHE_VERSION.encode())
    _hash_matrix(h, adata.X)
    h.update("\0".join(map(str, adata.var_names)).encode())
    h.update("\0".join(map(str, adata.obs_names)).encode())
    for col in ("highly_variable", "moranI"):
        if col in adata.var:
            h.update(col.encode() + np.asarray(adata.var[col], dtype=float).tobytes())
    h.update(np.ascontiguousarray(np.asarray(adata.obsm["spatial"], dtype=float)).tobytes())
    _hash_matrix(h, adata.obsp[pp.adjacency_key])
    h.update(pp.model_dump_json(exclude={"dataset", "descriptions"}).encode())
    h.update(repr(sorted((pp.descriptions or {}).items())).encode())
    return h.hexdigest()[:32]


def prompt_stage(adata, pp, *, cache: bool = True) -> str:
    """serialise_prompts through the on-disk cache (prompts are a pure function of the data,
    the graph and the settings). Returns "hit", "miss" or "off"."""
    import pandas as pd

    from tools.serialise import serialise_prompts

    path = None
    if cache and pp.adjacency_key in adata.obsp and "spatial" in adata.obsm:
        path = cache_root() / "prompts" / f"{_prompt_key(adata, pp)}.pkl"
        if path.exists():
            try:
                with open(path, "rb") as f:
                    s = pickle.load(f)
                if s.get("version") == CACHE_VERSION and len(s["prompt"]) == adata.n_obs:
                    if s["moranI_df"] is not None:
                        adata.uns["moranI"] = s["moranI_df"]
                    adata.var["moranI"] = s["moranI"]
                    adata.obs["prompt"] = pd.Series(s["prompt"], index=adata.obs_names,
                                                    dtype=object)
                    adata.obs["prompt_genes"] = pd.Series(s["prompt_genes"],
                                                          index=adata.obs_names, dtype=object)
                    adata.uns["prompt"] = s["uns"]
                    return "hit"
            except Exception:  # unreadable cache file: recompute and overwrite it
                pass
    had_moran = "moranI" in adata.uns
    serialise_prompts(adata, pp)
    if path is None:
        return "off"
    _write_pickle(path, {
        "version": CACHE_VERSION, "prompt": adata.obs["prompt"].tolist(),
        "prompt_genes": adata.obs["prompt_genes"].tolist(), "uns": adata.uns["prompt"],
        "moranI": adata.var["moranI"].to_numpy(),
        "moranI_df": None if had_moran else adata.uns.get("moranI")})
    return "miss"


def _write_pickle(path: Path, obj) -> None:
    from tools.io import atomic_path

    with contextlib.suppress(OSError), atomic_path(path) as tmp:  # a read-only cache only costs speed
        tmp.write_bytes(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))


def _store(adata, path: Path) -> None:
    state = {"version": CACHE_VERSION, "obs_names": adata.obs_names.to_numpy(),
             "var_names": adata.var_names.to_numpy(), "X": adata.X,
             "layers": dict(adata.layers), "obs": adata.obs, "var": adata.var,
             "obsm": dict(adata.obsm), "varm": dict(adata.varm), "obsp": dict(adata.obsp),
             "uns": dict(adata.uns)}
    _write_pickle(path, state)


def _restore(adata, path: Path) -> bool:
    """Put the cached post-stage state into `adata` in place; False (cache ignored) if the file
    is unreadable or does not fit this data."""
    try:
        with open(path, "rb") as f:
            s = pickle.load(f)
    except Exception:  # truncated / incompatible file: recompute and overwrite it
        return False
    if not isinstance(s, dict) or s.get("version") != CACHE_VERSION:
        return False
    oi = adata.obs_names.get_indexer(s["obs_names"])
    vi = adata.var_names.get_indexer(s["var_names"])
    if (oi < 0).any() or (vi < 0).any():
        return False
    if len(oi) != adata.n_obs or (oi != np.arange(len(oi))).any():
        adata._inplace_subset_obs(oi)
    if len(vi) != adata.n_vars or (vi != np.arange(len(vi))).any():
        adata._inplace_subset_var(vi)
    adata.X = s["X"]
    for k, v in s["layers"].items():
        adata.layers[k] = v
    adata.obs = s["obs"]
    adata.var = s["var"]
    for attr in ("obsm", "varm", "obsp"):
        store = getattr(adata, attr)
        for k, v in s[attr].items():
            store[k] = v
    adata.uns.update(s["uns"])
    return True
