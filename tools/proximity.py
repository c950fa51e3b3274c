"""Expression of one cell type near vs far from another ("is Mbp in microglia higher near
oligodendrocytes?").

Cells of `cell_type` within `radius` of any `center` cell (same section) are 'near', the other
cells of that type 'far' (zones as in the ligand-receptor tool); scanpy's rank_genes_groups
compares near vs far. Writes the DE table to ``adata.uns['de'][name]`` so it can go to GSEA.
"""
from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from tools.errors import ParameterError
from tools.registry import register


class ProximityParams(BaseModel):
    dataset: str = Field("data", description="id of a loaded dataset")
    label_key: str = Field(description="obs column with cell types")
    center: str = Field(description="cell type whose proximity is tested (the 'near' anchor)")
    cell_type: str = Field(description="cell type whose expression is compared near vs far")
    radius: float = Field(30.0, gt=0, le=2000, description="near = within this many µm of a "
                                                           "center cell")
    genes: list[str] | None = Field(None, description="genes to report whatever their rank")
    section_key: str | None = Field("auto", description="obs column of sections (distances are "
                                    "measured within a section); auto = the first of section, "
                                    "slice_id, slice, bregma, library_id, sample present; None = one section")
    method: Literal["wilcoxon", "t-test"] = Field("wilcoxon", description="scanpy test")
    layer: str | None = Field(None, description="layer to use instead of .X")
    min_cells: int = Field(10, ge=2, le=10000, description="minimum near and far cells")
    n_top: int = Field(10, ge=1, le=50, description="top up / down genes reported")


class GeneNearFar(BaseModel):
    gene: str
    logfc: float
    padj: float
    mean_near: float
    mean_far: float


class GeneChange(GeneNearFar):
    direction: Literal["up", "down", "unchanged"]  # near vs far, at adjusted p < 0.05


class ProximityResult(BaseModel):
    key: str
    cell_type: str
    center: str
    radius: float
    section_key: str | None
    n_near: int
    n_far: int
    transform: str
    genes: list[GeneChange]
    top_up: list[GeneNearFar]
    top_down: list[GeneNearFar]


@register("expression_near", ProximityParams, ProximityResult,
          intents=("higher or lower near", "expression near", "change near", "near vs far",
                   "near versus far", "higher near", "lower near", "when near", "change close to",
                   "expressed differently near", "far from them", "cells far from",
                   "away from them"))
def expression_near(adata, p: ProximityParams) -> ProximityResult:
    """Genes of one cell type near vs far from another type (within radius µm); DE table to
    adata.uns['de'][name], where GSEA can read it."""
    from tools.communication import near_far, section_column
    from tools.markers import check_group, group_labels, log_expression, rank_genes
    from tools.sentences import require_gene

    lab, types = group_labels(adata, p.label_key)
    center = check_group(p.center, types, f"cell type of '{p.label_key}'")
    cell_type = check_group(p.cell_type, types, f"cell type of '{p.label_key}'")
    if center == cell_type:
        raise ParameterError(f"center and cell_type are both '{center}': name two different types")
    genes = [require_gene(adata.var_names, g) for g in (p.genes or [])]
    section_key = section_column(adata, p.section_key)
    zone = near_far(adata, lab, center, cell_type, p.radius, section_key)
    n_near, n_far = int((zone == "near").sum()), int((zone == "far").sum())
    if min(n_near, n_far) < p.min_cells:
        raise ParameterError(f"{n_near} '{cell_type}' cells within {p.radius} µm of '{center}' and "
                             f"{n_far} farther: fewer than min_cells={p.min_cells} on one side; "
                             "change radius")
    sub = adata[(zone == "near") | (zone == "far")].copy()
    sub.obs["_zone"] = zone[(zone == "near") | (zone == "far")].astype(str)
    df, _ = rank_genes(sub, "_zone", ["near"], "far", p.method, p.layer, min_cells=p.min_cells)
    X, names, transform = log_expression(sub, p.layer)
    near = (sub.obs["_zone"] == "near").to_numpy()
    X = X.toarray() if hasattr(X, "toarray") else np.asarray(X)
    means = {g: (float(X[near, i].mean()), float(X[~near, i].mean())) for i, g in enumerate(names)}
    df = df.drop(columns="group").reset_index(drop=True)
    name = f"{cell_type}_near_{center}".replace("/", "_").replace(" ", "_")
    adata.uns.setdefault("de", {})[name] = df

    def row(r) -> GeneNearFar:
        mn, mf = means.get(r.gene, (float("nan"), float("nan")))
        return GeneNearFar(gene=r.gene, logfc=round(float(r.logfc), 3), padj=float(r.padj),
                           mean_near=round(mn, 4), mean_far=round(mf, 4))

    def change(r) -> GeneChange:
        d = "unchanged" if r.padj >= 0.05 else "up" if r.logfc > 0 else "down"
        return GeneChange(**row(r).model_dump(), direction=d)

    by_gene = {r.gene: r for r in df.itertuples()}
    up = df[df["logfc"] > 0].sort_values("score", ascending=False).head(p.n_top)
    down = df[df["logfc"] < 0].sort_values("score").head(p.n_top)
    return ProximityResult(
        key=f"de/{name}", cell_type=cell_type, center=center, radius=p.radius, section_key=section_key, n_near=n_near,
        n_far=n_far, transform=transform,
        genes=[change(by_gene[g]) for g in genes if g in by_gene],
        top_up=[row(r) for r in up.itertuples()], top_down=[row(r) for r in down.itertuples()])
