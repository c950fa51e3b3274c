"""Composition of a region, or of the neighbourhood around cells of one type, vs the tissue.

Writes ``adata.uns['composition'][name]`` (DataFrame: label, count, fraction,
background_fraction, ratio, and zscore / pval). Neighbourhoods use a squidpy spatial graph
(radius in µm or k nearest, per section) built on a temporary object, and
``squidpy.gr.nhood_enrichment`` for the permutation z-scores; the user's graph is left alone.
"""
from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, Field, model_validator

from tools.errors import ParameterError, require_obs, require_obsm
from tools.registry import register


class CompositionRow(BaseModel):
    label: str
    count: int
    fraction: float
    background_fraction: float
    ratio: float
    zscore: float | None = None
    pval: float | None = None


class CompositionResult(BaseModel):
    key: str
    n_cells: int
    n_background: int
    rows: list[CompositionRow]


def _rows(df, n_top):
    return [CompositionRow(label=str(r.label), count=int(r.count), fraction=round(r.fraction, 4),
                           background_fraction=round(r.background_fraction, 4),
                           ratio=round(r.ratio, 3),
                           zscore=None if np.isnan(r.zscore) else round(float(r.zscore), 2),
                           pval=None if np.isnan(r.pval) else float(r.pval))
            for r in df.head(n_top).itertuples()]


# ---------------------------------------------------------------- region
class RegionParams(BaseModel):
    dataset: str = Field("data", description="id of a loaded dataset")
    label_key: str = Field(description="obs column to count (e.g. cell type)")
    region_key: str = Field(description="obs column defining regions (e.g. domain, layer)")
    region: str = Field(description="value of region_key selecting the region")
    n_top: int = Field(20, ge=1, le=100, description="labels reported")


@register("region_composition", RegionParams, CompositionResult,
          intents=("composition", "cell type composition", "what cells are in",
                   "proportion of cell types", "which cell types are in", "most abundant",
                   "most common cell type in", "make up most of", "dominates"))
def region_composition(adata, p: RegionParams) -> CompositionResult:
    """Counts and fractions of a label in one region vs the whole tissue (hypergeometric p).

    Writes adata.uns['composition'][f'region:{region_key}={region}'].
    """
    import pandas as pd
    from scipy.stats import hypergeom

    from tools.markers import check_group, group_labels

    lab, _ = group_labels(adata, p.label_key)
    reg, regions = group_labels(adata, p.region_key)
    region = check_group(p.region, regions, f"region of '{p.region_key}'")
    ok = lab != None  # noqa: E711
    inside = ok & (reg == region)
    if inside.sum() == 0:
        raise ParameterError(f"region {p.region_key} = {region} has no labelled cells")
    bg = pd.Series(lab[ok]).value_counts()
    cnt = pd.Series(lab[inside]).value_counts().reindex(bg.index, fill_value=0)
    n, N = int(inside.sum()), int(ok.sum())
    df = pd.DataFrame({"label": bg.index, "count": cnt.values, "fraction": cnt.values / n,
                       "background_fraction": bg.values / N})
    df["ratio"] = df["fraction"] / df["background_fraction"]
    df["zscore"] = np.nan
    df["pval"] = hypergeom.sf(df["count"] - 1, N, bg.values, n)  # enrichment p-value
    df = df.sort_values(["ratio", "count"], ascending=False).reset_index(drop=True)
    name = f"region:{p.region_key}={region}".replace("/", "_")
    adata.uns.setdefault("composition", {})[name] = df
    return CompositionResult(key=f"composition/{name}", n_cells=n, n_background=N,
                             rows=_rows(df, p.n_top))


# ---------------------------------------------------------------- neighbourhood
class NeighbourhoodParams(BaseModel):
    dataset: str = Field("data", description="id of a loaded dataset")
    label_key: str = Field(description="obs column with cell types")
    cell_type: str = Field(description="cell type whose neighbourhood is described")
    radius: float | None = Field(30.0, gt=0, le=5000, description="neighbourhood radius (µm)")
    k: int | None = Field(None, ge=1, le=100, description="k nearest cells instead of radius")
    section_key: str | None = Field(None, description="obs column of sections/slices; "
                                    "neighbours are searched within a section")
    n_perms: int = Field(500, ge=50, le=5000, description="label permutations for z-scores")
    seed: int = Field(0, description="random seed")
    n_top: int = Field(20, ge=1, le=100, description="labels reported")

    @model_validator(mode="after")
    def _one_mode(self):
        if self.k is not None:
            self.radius = None
        return self


class NeighbourhoodResult(CompositionResult):
    n_center_cells: int
    mean_neighbours: float
    method: Literal["radius", "knn"]


def spatial_graph(adata, label_key: str, radius=None, k=None, section_key=None):
    """Temporary AnnData (labelled cells only) with a squidpy spatial graph."""
    import anndata as ad
    import pandas as pd
    import squidpy as sq

    from tools.markers import group_labels

    require_obsm(adata, "spatial")
    lab, _ = group_labels(adata, label_key)
    ok = lab != None  # noqa: E711
    obs = pd.DataFrame({"label": pd.Categorical(lab[ok])}, index=adata.obs_names[ok])
    if section_key:
        sec, _ = group_labels(adata, section_key)
        obs["section"] = pd.Categorical(sec[ok])
    tmp = ad.AnnData(obs=obs, obsm={"spatial": np.asarray(adata.obsm["spatial"])[ok, :2]})
    kw = {"radius": float(radius)} if radius else {"n_neighs": int(k)}
    sq.gr.spatial_neighbors(tmp, coord_type="generic", library_key="section" if section_key
                            else None, **kw)
    return tmp


@register("neighbourhood_composition", NeighbourhoodParams, NeighbourhoodResult,
          intents=("which cell types are near", "neighbourhood", "neighborhood", "surrounding",
                   "neighbours of", "neighbors of", "colocalisation",
                   "neighbourhood enrichment", "most common neighbour", "common neighbours",
                   "closer to", "nearer to", "found most often within", "border", "lie next to",
                   "adjacent to"))
def neighbourhood_composition(adata, p: NeighbourhoodParams) -> NeighbourhoodResult:
    """Cell types around cells of one type (radius or kNN) vs the tissue, with z-scores.

    Z-scores from label permutations (squidpy nhood_enrichment). Writes
    adata.uns['composition'][f'nhood:{label_key}={cell_type}'] and the type x type z-score matrix.
    """
    import pandas as pd
    import squidpy as sq

    from tools.markers import check_group, group_labels

    require_obs(adata, p.label_key)
    _, types = group_labels(adata, p.label_key)
    center = check_group(p.cell_type, types, f"cell type of '{p.label_key}'")
    if p.section_key:
        require_obs(adata, p.section_key)
    tmp = spatial_graph(adata, p.label_key, p.radius, p.k, p.section_key)
    A = tmp.obsp["spatial_connectivities"].tocsr()
    lab = tmp.obs["label"].astype(str).to_numpy()
    is_c = lab == center
    nb = A[np.where(is_c)[0]]
    if nb.nnz == 0:
        raise ParameterError(f"empty neighbourhood: no cell within {p.radius} µm of any "
                             f"'{center}' cell; increase radius or use k")
    cats = list(tmp.obs["label"].cat.categories)
    onehot = (lab[:, None] == np.array(cats)[None, :]).astype(float)
    counts = np.asarray((nb > 0).astype(float) @ onehot).sum(0)
    import warnings

    with warnings.catch_warnings():  # 0/0 z-score for types too rare to vary under permutation
        warnings.simplefilter("ignore", RuntimeWarning)
        sq.gr.nhood_enrichment(tmp, "label", library_key="section" if p.section_key else None,
                               n_perms=p.n_perms, seed=p.seed, show_progress_bar=False, n_jobs=1)
    z = tmp.uns["label_nhood_enrichment"]["zscore"][cats.index(center)]
    bg = onehot.sum(0) / len(lab)
    frac = counts / counts.sum()
    df = pd.DataFrame({"label": cats, "count": counts.astype(int), "fraction": frac,
                       "background_fraction": bg, "ratio": frac / bg, "zscore": z,
                       "pval": np.nan})
    df = df.sort_values(["zscore", "ratio"], ascending=False).reset_index(drop=True)
    name = f"nhood:{p.label_key}={center}".replace("/", "_")
    store = adata.uns.setdefault("composition", {})
    store[name] = df
    store[f"nhood_enrichment:{p.label_key}"] = pd.DataFrame(
        tmp.uns["label_nhood_enrichment"]["zscore"], index=cats, columns=cats)
    return NeighbourhoodResult(
        key=f"composition/{name}", n_cells=int(counts.sum()), n_background=len(lab),
        rows=_rows(df, p.n_top), n_center_cells=int(is_c.sum()),
        mean_neighbours=round(float(nb.nnz / is_c.sum()), 2),
        method="knn" if p.k else "radius")
