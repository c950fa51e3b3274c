"""ST-LLM prompt serialisation: each spot as text = Task + Spatial(i) + Graph(i) + Bio(i).

Wording lives in ``prompts/stllm*.txt``; this module only fills it in. Variants (ST-LLM Fig. 5):
``stllm`` full structured prompt; ``qr`` the same facts as "Question: ... Response: ...";
``se`` (secondary embedding) a short Bio-only summary (the spot's and its neighbours' top genes),
read here as a second text to embed and combine with the main prompt's embedding; ``rag`` the
full prompt plus retrieved descriptions of the spot's top genes. There is no sampling: prompts are
a pure function of the data and the parameters (ties are broken by gene name / spot order).
"""
from __future__ import annotations

import math
import re
import time
from typing import Any, Literal, Mapping

import numpy as np
from pydantic import BaseModel, Field

from tools.errors import DataError, ParameterError, UnknownKeyError, require_obsm, suggest
from tools.registry import register

COMPASS = ("east", "north-east", "north", "north-west", "west", "south-west", "south",
           "south-east")
REGIONS = ("right", "top-right", "top", "top-left", "left", "bottom-left", "bottom",
           "bottom-right")
SAME = "same position"


class PromptParams(BaseModel):
    dataset: str = Field("data", description="id of a loaded dataset")
    variant: Literal["stllm", "qr", "se", "rag"] = Field(
        "stllm", description="prompt form: full structured (stllm), question/response (qr), "
        "short gene summary for a secondary embedding (se), or with gene descriptions (rag)")
    adjacency_key: str = Field("spatial_connectivities",
                               description="obsp key of the spot graph, e.g. 'stllm_adjacency'")
    t1: float = Field(0.0, ge=0, description="first-order neighbours: edges with weight >= t1")
    t2: float = Field(0.0, ge=0, description="second-order neighbours: 2-hop paths whose "
                      "weight product is >= t2")
    max_neighbours: int = Field(6, ge=0, le=50,
                                description="at most this many first- and second-order neighbours")
    n_genes: int = Field(10, ge=1, le=100, description="top-K genes (expression x Moran's I)")
    n_neighbour_genes: int = Field(5, ge=0, le=50, description="genes named for the neighbourhood "
                                   "(most frequent in the listed neighbours' top genes)")
    gene_source: Literal["spot", "smoothed"] = Field(
        "smoothed", description="'spot': the spot's log-normalised value; 'smoothed': mean over "
        "the spot and its first-order neighbours, z-scored against the tissue")
    n_hvg: int = Field(2000, ge=10, le=50000, description="genes scored by Moran's I when "
                       "var['highly_variable'] is absent")
    coord_decimals: int = Field(0, ge=0, le=4, description="decimals of the coordinates")
    weight_decimals: int = Field(2, ge=0, le=6, description="decimals of connection strengths")
    y_axis: Literal["down", "up"] = Field(
        "down", description="'down': y grows downwards (image / Visium pixels); 'up': Cartesian")
    max_tokens: int = Field(256, ge=16, le=32768, description="token budget per prompt")
    description_sentences: int = Field(1, ge=1, le=20,
                                       description="sentences kept of each gene description")
    descriptions: Mapping[str, str] | None = Field(
        None, description="gene symbol -> description (retrieved); required by variant 'rag'")


class PromptResult(BaseModel):
    key: str = "prompt"
    variant: str
    n_spots: int
    n_genes_scored: int = Field(description="genes with a Moran's I")
    top_spatial_genes: list[str] = Field(description="highest Moran's I")
    mean_tokens: float
    max_tokens: int
    n_shortened: int = Field(description="prompts that dropped content to fit the budget")
    tokenizer: str
    seconds: float
    example: str


# ---------------------------------------------------------------- tokens
_WORD = re.compile(r"[^\W\d_]+")
_UPPER = re.compile(r"(?<![^\W\d_])[A-Z]{2,}(?![^\W\d_])")
_DIGITS = re.compile(r"\d+")
_PUNCT = re.compile(r"[^\w\s]|_")


def estimate_tokens(text: str) -> int:
    """Conservative word-piece count: words in 4-char pieces, upper-case words (gene symbols) in
    2-char pieces, digit runs in 3-digit pieces, one token per punctuation mark."""
    up = _UPPER.findall(text)
    return (sum((len(w) + 3) // 4 for w in _WORD.findall(text)) + len(_PUNCT.findall(text))
            + sum((len(w) + 2) // 3 for w in _DIGITS.findall(text))
            + sum((len(w) + 1) // 2 - (len(w) + 3) // 4 for w in up))


def _counter(tokenizer):
    if tokenizer is None:
        return "estimate", estimate_tokens
    name = str(getattr(tokenizer, "name_or_path", "") or getattr(tokenizer, "name", "")
               or type(tokenizer).__name__)
    if hasattr(tokenizer, "encode"):
        return name, lambda t: len(tokenizer.encode(t))
    if hasattr(tokenizer, "tokenize"):
        return name, lambda t: len(tokenizer.tokenize(t))
    raise ParameterError("tokenizer must have an encode() or tokenize() method")


# ---------------------------------------------------------------- geometry
def _sector(dx, dy, y_axis: str) -> np.ndarray:
    """8 compass sectors of 45 deg (0 = east / right, counter-clockwise)."""
    up = -dy if y_axis == "down" else dy
    return np.round(np.arctan2(up, dx) / (np.pi / 4)).astype(int) % 8


def tissue_regions(coords: np.ndarray, y_axis: str = "down") -> np.ndarray:
    """One of 9 region names per spot: 'centre' (inner third of the radius) or a sector."""
    v = coords - coords.mean(0)
    r = np.hypot(v[:, 0], v[:, 1])
    names = np.array(REGIONS + ("centre",), dtype=object)
    idx = _sector(v[:, 0], v[:, 1], y_axis)
    idx[r <= r.max() / 3] = 8
    return names[idx]


# ---------------------------------------------------------------- graph
def _first_k(rows, cols, keys, k: int, n: int):
    """Sort entries by row, then by `keys` (most significant first, descending), then col;
    keep the first k per row. Returns rows, cols, boundaries (n+1)."""
    order = np.lexsort((cols,) + tuple(-np.asarray(x) for x in keys[::-1]) + (rows,))
    rows, cols = rows[order], cols[order]
    starts = np.searchsorted(rows, np.arange(n + 1))
    keep = (np.arange(len(rows)) - starts[rows]) < k
    rows, cols = rows[keep], cols[keep]
    return order[keep], cols, np.searchsorted(rows, np.arange(n + 1))


def _adjacency(adata, key: str, t1: float):
    import scipy.sparse as sp

    if key not in adata.obsp:
        raise UnknownKeyError(f"obsp key '{key}' not found{suggest(key, adata.obsp.keys())}; "
                              "build the spatial graph first (squidpy.gr.spatial_neighbors)")
    c = sp.coo_matrix(adata.obsp[key], dtype=np.float64)
    if c.shape != (adata.n_obs, adata.n_obs):
        raise DataError(f"obsp['{key}'] is {c.shape}, expected {adata.n_obs} x {adata.n_obs}")
    keep = (c.row != c.col) & (c.data >= t1) & (c.data > 0)  # no self-loops, above threshold
    a = sp.csr_matrix((c.data[keep], (c.row[keep], c.col[keep])), shape=c.shape)
    a.sort_indices()
    return a


def _edges(a, coords, y_axis: str, cap: int):
    """Rank a sparse graph's edges per spot (weight desc, distance, direction, index); cap."""
    c = a.tocoo()
    r, j, w = c.row, c.col, c.data
    d = coords[j] - coords[r]
    dist = np.hypot(d[:, 0], d[:, 1])
    sec = _sector(d[:, 0], d[:, 1], y_axis)
    scale = np.median(dist[dist > 0]) if (dist > 0).any() else 1.0
    sec = np.where(dist <= 1e-6 * scale, 8, sec)
    order, cols, bounds = _first_k(r, j, (w, -np.round(dist / scale, 1), -sec), cap, a.shape[0])
    return cols, w[order], sec[order], bounds


def _second_order(a, t2: float):
    """Spots exactly two hops away; weight = the largest product of weights along a path."""
    import scipy.sparse as sp

    n = a.shape[0]
    c = a.tocoo()
    deg = np.diff(a.indptr)
    cnt = deg[c.col]
    rep = np.repeat(np.arange(len(c.row)), cnt)
    off = np.arange(cnt.sum()) - np.repeat(np.cumsum(cnt) - cnt, cnt)
    pos = a.indptr[c.col[rep]] + off
    i, k, w = c.row[rep], a.indices[pos], c.data[rep] * a.data[pos]
    first = np.sort(c.row.astype(np.int64) * n + c.col)
    key = i.astype(np.int64) * n + k
    hit = np.searchsorted(first, key).clip(max=max(len(first) - 1, 0))
    is_first = first[hit] == key if len(first) else np.zeros(len(key), bool)
    keep = (k != i) & ~is_first & (w >= t2) & (w > 0)
    key, w = key[keep], w[keep]
    o = np.lexsort((-w, key))
    key, w = key[o], w[o]
    u = np.r_[True, key[1:] != key[:-1]] if len(key) else np.zeros(0, bool)
    return sp.csr_matrix((w[u], (key[u] // n, key[u] % n)), shape=(n, n))


# ---------------------------------------------------------------- genes
def moran_scores(adata, adjacency_key: str = "spatial_connectivities", n_hvg: int = 2000):
    """Moran's I per gene (NaN when not scored), from var['moranI'] or uns['moranI'] when present,
    else squidpy.gr.spatial_autocorr on HVGs. Returns (Series, DataFrame to store or None)."""
    import pandas as pd

    if "moranI" in adata.var and np.isfinite(adata.var["moranI"].to_numpy(float)).any():
        return adata.var["moranI"].astype(float), None
    old = adata.uns.get("moranI")
    if isinstance(old, pd.DataFrame) and "I" in old:
        return old["I"].reindex(adata.var_names).astype(float), None
    import scanpy as sc
    import squidpy as sq

    if "highly_variable" in adata.var:
        genes = adata.var_names[adata.var["highly_variable"].to_numpy(bool)]
    elif n_hvg >= adata.n_vars:
        genes = adata.var_names
    else:
        hv = sc.pp.highly_variable_genes(adata, n_top_genes=n_hvg, inplace=False)
        genes = adata.var_names[hv["highly_variable"].to_numpy(bool)]
    if len(genes) == 0:
        raise DataError("no highly variable genes to score with Moran's I")
    df = sq.gr.spatial_autocorr(adata, connectivity_key=adjacency_key, genes=list(genes),
                                mode="moran", n_perms=None, copy=True)
    return df["I"].reindex(adata.var_names).astype(float), df


def _check_log(adata) -> None:
    import scipy.sparse as sp

    x = adata.X.data if sp.issparse(adata.X) else np.asarray(adata.X).ravel()
    x = x[: 200_000]
    if not np.isfinite(x).all() or (x < 0).any():
        raise DataError("adata.X has negative or non-finite values; prompts need log-normalised "
                        "expression (scanpy normalize_total + log1p), not scaled data")
    if "log1p" not in adata.uns and x.size and np.all(x == np.round(x)) and x.max() > 20:
        raise DataError("adata.X looks like raw counts; log-normalise it first "
                        "(scanpy normalize_total + log1p)")


def _importance(adata, a1, moran, source: str):
    """Dense (spots x genes) importance = expression x max(Moran's I, 0) over genes with I > 0,
    columns in gene-name order."""
    import scipy.sparse as sp

    idx = np.flatnonzero(np.nan_to_num(moran.to_numpy(float)) > 0)
    names = adata.var_names.to_numpy()[idx].astype(str)
    o = np.argsort(names, kind="stable")
    idx, names = idx[o], names[o]
    x = adata.X[:, idx]
    x = x.toarray() if sp.issparse(x) else np.asarray(x, dtype=float)
    x = x.astype(np.float64)
    if source == "smoothed":
        b = (a1 > 0).astype(np.float64) + sp.identity(a1.shape[0], format="csr")
        b = sp.diags(1.0 / np.asarray(b.sum(1)).ravel()) @ b
        s = b @ x
        sd = s.std(0)
        x = np.where(sd > 0, (s - s.mean(0)) / np.where(sd > 0, sd, 1), 0.0)
    return np.clip(x, 0, None) * moran.to_numpy(float)[idx], names


def _top_genes(imp, k: int):
    n, g = imp.shape
    k = min(k, g)
    if k == 0:
        return np.zeros(0, int), np.zeros(n + 1, int)
    kth = np.partition(imp, g - k, axis=1)[:, g - k]
    r, c = np.nonzero((imp >= kth[:, None]) & (imp > 0))
    _, cols, bounds = _first_k(r, c, (imp[r, c],), k, n)
    return cols, bounds


def _neighbour_genes(imp, top_c, top_b, nb_cols, nb_b, k: int):
    """Genes most frequent in the listed neighbours' top lists (then summed importance, name)."""
    import scipy.sparse as sp

    n, g = imp.shape
    rows = np.repeat(np.arange(n), np.diff(top_b))
    t = sp.csr_matrix((np.ones(len(top_c)), (rows, top_c)), shape=(n, g))
    ti = sp.csr_matrix((imp[rows, top_c], (rows, top_c)), shape=(n, g))
    w = sp.csr_matrix((np.ones(len(nb_cols)), (np.repeat(np.arange(n), np.diff(nb_b)), nb_cols)),
                      shape=(n, n))
    cnt, s = (w @ t).tocoo(), (w @ ti).tocsr()
    if k == 0 or cnt.nnz == 0:
        return np.zeros(0, int), np.zeros(n + 1, int)
    summed = np.asarray(s[cnt.row, cnt.col]).ravel()
    _, cols, bounds = _first_k(cnt.row, cnt.col, (cnt.data, summed), k, n)
    return cols, bounds


# ---------------------------------------------------------------- text
def _phrases() -> dict[str, str]:
    import configparser

    from prompts import load

    cp = configparser.ConfigParser(interpolation=None)
    cp.read_string(load("stllm_phrases"))
    return dict(cp["phrases"])


def _first_sentences(text: str, n: int) -> str:
    parts = re.split(r"(?<=[.!?])\s+(?=[A-Z0-9])", " ".join(str(text).split()))
    out = " ".join(parts[:n]).strip()
    return out if not out or out[-1] in ".!?" else out + "."


class _Renderer:
    def __init__(self, template: str, ph: dict[str, str], task: str):
        self.t, self.ph, self.task = template, ph, task

    def _list(self, key, items, sep=", ", empty=""):
        return self.ph[key].format(items=sep.join(items)) if items else empty

    def __call__(self, x, y, region, first, second, genes, ngenes, descs) -> str:
        ph = self.ph
        nb = ph["neighbour"].format
        f = dict(
            task=self.task,
            spatial=ph["spatial"].format(x=x, y=y, region=region),
            first_order=self._list("first_order", [nb(direction=d, weight=w) for d, w in first],
                                   empty=ph["no_first_order"]),
            second_order=self._list("second_order",
                                    [nb(direction=d, weight=w) for d, w in second]),
            genes=self._list("genes", genes, empty=ph["no_genes"]),
            neighbour_genes=self._list("neighbour_genes", ngenes),
            descriptions=self._list("descriptions", [
                ph["description"].format(gene=g, text=t) for g, t in descs], sep=" "),
        )
        lines = (" ".join(line.split()) for line in self.t.format(**f).splitlines())
        return "\n".join(line for line in lines if line)


def _fit(render, count, budget: int, parts: dict, spot: str):
    """Render; while over budget drop, in order: second-order neighbours, neighbour genes, gene
    descriptions, lower-ranked genes (always whole items). Returns text, tokens, shortened."""
    text = render(**parts)
    n = count(text)
    shortened = False
    for key, floor in (("second", 0), ("ngenes", 0), ("descs", 0), ("genes", 1)):
        while n > budget and len(parts[key]) > floor:
            parts[key] = parts[key][:-1]
            if key == "genes":
                parts["descs"] = [d for d in parts["descs"] if d[0] in parts["genes"]]
            text, shortened = render(**parts), True
            n = count(text)
    if n > budget:
        raise ParameterError(f"max_tokens={budget} is too small: the shortest prompt of spot "
                             f"'{spot}' has {n} tokens")
    return text, n, shortened


# ---------------------------------------------------------------- the tool
@register("serialise_prompts", PromptParams, PromptResult, intents=(
    "serialise spots to text", "serialize spots to text", "make prompts", "describe spots as text",
    "spot prompts", "st-llm prompts", "text prompts for spots"))
def serialise_prompts(adata, p: PromptParams, tokenizer: Any = None) -> PromptResult:
    """Serialise every spot as an ST-LLM text prompt (position, neighbours, top spatial genes).
    Writes obs['prompt'], obs['prompt_genes'] (the ranked top genes, comma-separated),
    uns['prompt'] (settings, token lengths, gene summary) and var['moranI'] / uns['moranI'] (once).
    `tokenizer`: any object with encode() or tokenize(); default a conservative estimate."""
    import pandas as pd

    from prompts import load

    t0 = time.perf_counter()
    if p.variant == "rag" and not p.descriptions:
        raise ParameterError("variant 'rag' needs gene descriptions (descriptions=)")
    require_obsm(adata, "spatial")
    coords = np.asarray(adata.obsm["spatial"], dtype=float)[:, :2]
    if not np.isfinite(coords).all():
        raise DataError("obsm['spatial'] has NaN or infinite coordinates")
    tok_name, count = _counter(tokenizer)
    a1 = _adjacency(adata, p.adjacency_key, p.t1)
    _check_log(adata)
    moran, moran_df = moran_scores(adata, p.adjacency_key, p.n_hvg)
    imp, names = _importance(adata, a1, moran, p.gene_source)
    if imp.shape[1] == 0:
        raise DataError("no gene has a positive Moran's I: no spatial structure to describe")

    nb_j, nb_w, nb_s, nb_b = _edges(a1, coords, p.y_axis, p.max_neighbours)
    s2_j, s2_w, s2_s, s2_b = _edges(_second_order(a1, p.t2), coords, p.y_axis, p.max_neighbours)
    top_c, top_b = _top_genes(imp, p.n_genes)
    ng_c, ng_b = _neighbour_genes(imp, top_c, top_b, nb_j, nb_b, p.n_neighbour_genes)

    descs = {}
    if p.variant == "rag":
        used = set(names[top_c])
        descs = {g: _first_sentences(p.descriptions.get(g) or p.descriptions.get(g.upper()) or "",
                                     p.description_sentences) for g in used}
        descs = {g: d for g, d in descs.items() if d}
        if not descs:
            raise ParameterError(f"descriptions cover none of the {len(used)} top genes "
                                 f"(e.g. {', '.join(sorted(used)[:3])})")

    dirs = np.array(COMPASS + (SAME,), dtype=object)
    fmt_w = lambda w: f"{w:.{p.weight_decimals}f}"  # noqa: E731
    xy = np.round(coords, p.coord_decimals)
    regions = tissue_regions(coords, p.y_axis)
    render = _Renderer(load(f"stllm_{p.variant}" if p.variant != "stllm" else "stllm"),
                       _phrases(), load("stllm_task").strip())
    texts, ranked, ntok, short = [], [], np.zeros(adata.n_obs, int), 0
    obs_names = adata.obs_names
    for i in range(adata.n_obs):
        a, b = nb_b[i], nb_b[i + 1]
        c, d = s2_b[i], s2_b[i + 1]
        genes = list(names[top_c[top_b[i]:top_b[i + 1]]])
        parts = dict(
            x=f"{xy[i, 0]:.{p.coord_decimals}f}", y=f"{xy[i, 1]:.{p.coord_decimals}f}",
            region=regions[i],
            first=[(dirs[s], fmt_w(w)) for s, w in zip(nb_s[a:b], nb_w[a:b])],
            second=[(dirs[s], fmt_w(w)) for s, w in zip(s2_s[c:d], s2_w[c:d])],
            genes=genes, ngenes=list(names[ng_c[ng_b[i]:ng_b[i + 1]]]),
            descs=[(g, descs[g]) for g in genes if g in descs])
        text, ntok[i], cut = _fit(render, count, p.max_tokens, parts, obs_names[i])
        texts.append(text)
        ranked.append(",".join(genes))
        short += cut

    counts = pd.Series(names[top_c]).value_counts()
    counts = counts.sort_index().sort_values(ascending=False, kind="stable").head(20)
    scored = moran.dropna().sort_values(ascending=False, kind="stable")
    settings = p.model_dump(exclude={"descriptions", "dataset"})
    settings["n_descriptions"] = len(p.descriptions or {})
    # write only after everything succeeded
    if moran_df is not None:
        adata.uns["moranI"] = moran_df
    adata.var["moranI"] = moran.to_numpy()
    adata.obs["prompt"] = pd.Series(texts, index=adata.obs_names, dtype=object)
    adata.obs["prompt_genes"] = pd.Series(ranked, index=adata.obs_names, dtype=object)
    adata.uns["prompt"] = {
        "settings": settings, "tokenizer": tok_name,
        "tokens": {"mean": float(ntok.mean()), "max": int(ntok.max()), "n_shortened": int(short)},
        "top_spatial_genes": {"gene": scored.index[:20].to_numpy(str),
                              "moranI": scored.to_numpy(float)[:20]},
        "top_gene_frequency": {"gene": counts.index.to_numpy(str),
                               "n_spots": counts.to_numpy(int)},
    }
    return PromptResult(
        variant=p.variant, n_spots=adata.n_obs, n_genes_scored=int(moran.notna().sum()),
        top_spatial_genes=list(scored.index[:10]), mean_tokens=round(float(ntok.mean()), 1),
        max_tokens=int(ntok.max()), n_shortened=int(short), tokenizer=tok_name,
        seconds=round(time.perf_counter() - t0, 3), example=texts[0])
