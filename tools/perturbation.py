"""In-silico perturbation with the context model (TissueNarrator's neighbourhood and genetic tasks).

Neighbourhood: add, remove or transplant cells of a named type near target cells and predict the
targets' new profiles. Genetic: knock a gene out (or down) in one cell and predict the response
of the cells whose context holds it. Both compare perturbed with control predictions of the same
model and write a DE table (gene, log_fold_change, difference, control, perturbed, rank) to
``adata.uns['de'][name]`` (where ``gsea_prerank`` finds it) and a summary to
``adata.uns['perturbation'][name]``; with ``gene_sets`` the table goes straight to GSEA prerank.
"""
from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from tools.errors import DataError, ParameterError, UnknownKeyError, suggest
from tools.registry import register


class _PerturbParams(BaseModel):
    dataset: str = Field("data", description="id of a loaded dataset")
    cell_type_key: str = Field("cell_class", description="obs column with cell types")
    k: int = Field(10, ge=1, le=100, description="context size: each cell's k nearest cells")
    section_key: str | None = Field(None, description="obs column of sections; contexts stay within one")
    drop_types: list[str] = Field(["Ambiguous"], description="cell types left out entirely")
    drop_gene_prefixes: list[str] = Field(["Blank_"], description="genes starting with these are left out")
    max_train_cells_per_type: int = Field(1000, ge=10, description="training cells per type for the model")
    name: str | None = Field(None, description="key of the DE table under uns['de'] (default from the perturbation)")
    gene_sets: str | None = Field(None, description="GMT file: run GSEA prerank on the DE table")
    genes: list[str] | None = Field(None, description="genes whose predicted change is reported "
                                    "(besides the top changes)")
    seed: int = Field(0, description="random seed")


class GeneChange(BaseModel):
    gene: str
    log_fold_change: float
    direction: Literal["up", "down", "unchanged"] | None = None


class PerturbationResult(BaseModel):
    key: str
    n_targets: int
    max_abs_log_fold_change: float
    top_up: list[GeneChange]
    top_down: list[GeneChange]
    genes: list[GeneChange] | None = None  # the genes asked for (params.genes), with their direction
    gsea_top_terms: list[str] | None = None


def de_table(control: np.ndarray, perturbed: np.ndarray, genes):
    """Perturbed vs control predictions (log1p, cells x genes) -> DataFrame ranked by log2 fold change
    of the geometric means (pseudocount 1); difference is in expression units."""
    import pandas as pd

    c, q = control.mean(0), perturbed.mean(0)
    df = pd.DataFrame({"gene": np.asarray(genes, str), "log_fold_change": (q - c) / np.log(2),
                       "difference": np.expm1(perturbed).mean(0) - np.expm1(control).mean(0),
                       "control": c, "perturbed": q})
    df = df.sort_values(["log_fold_change", "gene"], ascending=[False, True]).reset_index(drop=True)
    df["rank"] = np.arange(1, len(df) + 1)
    return df


def _fit(adata, p: _PerturbParams):
    from tools.generation import ContextModel, contexts, prepare, sample_per_type

    data = prepare(adata, p.cell_type_key, p.section_key, p.drop_gene_prefixes, p.drop_types)
    train = sample_per_type(data, np.arange(len(data.names)), p.max_train_cells_per_type, p.seed)
    idx, dist = contexts(data, train, p.k)
    model = ContextModel(conditioned=True).fit(data, train, idx, dist,
                                               mean_cells=np.arange(len(data.names)))
    return data, model


def _type_code(data, name: str) -> int:
    if name not in data.types:
        raise UnknownKeyError(f"cell type '{name}' not found{suggest(name, data.types)} "
                              f"(types: {', '.join(data.types)})")
    return data.types.index(name)


def _finish(adata, p, name: str, ctrl, pert, genes, extra: dict) -> PerturbationResult:
    df = de_table(ctrl, pert, genes)
    top = lambda d: [GeneChange(gene=r.gene, log_fold_change=round(float(r.log_fold_change), 4))  # noqa: E731
                     for r in d.itertuples()]
    res = PerturbationResult(key=f"de/{name}", n_targets=len(ctrl),
                             max_abs_log_fold_change=float(df["log_fold_change"].abs().max()),
                             top_up=top(df.head(5)), top_down=top(df.tail(5).iloc[::-1]))
    if p.genes:
        by = {g.upper(): r for g, r in zip(df["gene"].astype(str), df.itertuples())}
        asked = []
        for g in p.genes:
            r = by.get(str(g).upper())
            if r is None:
                raise UnknownKeyError(f"gene '{g}' is not among the modelled genes{suggest(g, list(df['gene']))}")
            lfc = round(float(r.log_fold_change), 4)
            asked.append(GeneChange(gene=r.gene, log_fold_change=lfc,
                                    direction="up" if lfc > 0 else "down" if lfc < 0 else "unchanged"))
        res.genes = asked
    adata.uns.setdefault("de", {})[name] = df
    adata.uns.setdefault("perturbation", {})[name] = {
        **p.model_dump(exclude_none=True), **extra, "n_targets": len(ctrl)}
    if p.gene_sets:
        from tools.enrichment import prerank

        gsea, _ = prerank(df, p.gene_sets, rank_by="logfc", seed=p.seed)
        res.gsea_top_terms = [t.term for t in gsea.top_terms]
    return res


class NeighbourhoodParams(_PerturbParams):
    target_type: str = Field(description="cell type whose profiles are predicted")
    perturb_type: str = Field(description="cell type that is added, removed or transplanted")
    action: Literal["add", "remove", "transplant"] = Field(
        "add", description="add: put n_cells of perturb_type among each target's neighbours; remove: drop "
                    "perturb_type cells within radius; transplant: replace the n_cells nearest neighbours")
    n_cells: int = Field(3, ge=1, le=100, description="cells added or replaced per target")
    radius: float = Field(50.0, gt=0, le=1000, description="µm around a target for 'remove'")
    max_targets: int = Field(500, ge=1, le=100000, description="at most this many target cells")


def _candidates(data, targets, n: int):
    """Up to n nearest other cells of each target in its section (indices, distances; -1 / inf pad)."""
    from scipy.spatial import cKDTree

    idx = np.full((len(targets), n), -1)
    dist = np.full((len(targets), n), np.inf)
    for s in np.unique(data.section[targets]):
        pool = np.flatnonzero(data.section == s)
        sel = data.section[targets] == s
        m = min(n + 1, len(pool))
        d, j = cKDTree(data.coords[pool]).query(data.coords[targets[sel]], k=m)
        d, j = d.reshape(sel.sum(), m), pool[j.reshape(sel.sum(), m)]
        keep = j != targets[sel][:, None]
        for r, row in enumerate(np.flatnonzero(sel)):
            jj, dd = j[r][keep[r]][:n], d[r][keep[r]][:n]
            idx[row, :len(jj)], dist[row, :len(dd)] = jj, dd
    return idx, dist


@register("perturb_neighbourhood", NeighbourhoodParams, PerturbationResult,
          intents=("perturb neighbourhood", "remove cells", "add cells", "transplant",
                   "what if there were no", "neighbourhood perturbation", "put next to",
                   "place next to", "put near", "next to them", "surrounded by", "remove", "were removed"))
def perturb_neighbourhood(adata, p: NeighbourhoodParams) -> PerturbationResult:
    """Add, remove or transplant cells of a type near target cells; predict the targets' response
    with the context model. Writes adata.uns['de'][name] and adata.uns['perturbation'][name]."""
    data, model = _fit(adata, p)
    tt, pt = _type_code(data, p.target_type), _type_code(data, p.perturb_type)
    rng = np.random.default_rng(p.seed)
    targets = np.flatnonzero(data.type_idx == tt)
    targets = np.sort(rng.permutation(targets)[: p.max_targets])
    cand, cdist = _candidates(data, targets, p.k + 100)
    if (cand[:, : p.k] < 0).any():
        raise DataError(f"empty neighbourhood: some {p.target_type} cells have fewer than {p.k} neighbours")
    ctx, d = cand[:, : p.k], cdist[:, : p.k]
    x, t = data.expr[ctx], data.type_idx[ctx]
    ttype = np.full(len(targets), tt)
    ctrl = model.predict_from(x, t, d, ttype)
    donor = model.means[pt]
    if p.action == "remove":
        gone = (cand >= 0) & (data.type_idx[np.maximum(cand, 0)] == pt) & (cdist <= p.radius)
        if not gone.any():
            raise ParameterError(f"no {p.perturb_type} cells within {p.radius:g} µm of the "
                                 f"{p.target_type} cells: nothing to remove")
        order = np.argsort(gone | (cand < 0), axis=1, kind="stable")[:, : p.k]
        ctx2 = np.take_along_axis(cand, order, 1)
        d2 = np.take_along_axis(cdist, order, 1)
        if (np.take_along_axis(gone | (cand < 0), order, 1)).any():
            raise DataError("empty neighbourhood: too few cells left after removal; lower k or radius")
        x2, t2 = data.expr[ctx2], data.type_idx[ctx2]
        n_changed = int(gone.sum())
    elif p.action == "add":
        lo, hi = d[:, :1], np.median(d, axis=1, keepdims=True)
        dn = lo + rng.random((len(targets), p.n_cells)) * (hi - lo)
        d_all = np.hstack([d, dn])
        x_all = np.concatenate([x, np.broadcast_to(donor, (len(targets), p.n_cells, len(donor)))], 1)
        t_all = np.hstack([t, np.full((len(targets), p.n_cells), pt)])
        o = np.argsort(d_all, axis=1, kind="stable")[:, : p.k]
        d2, t2 = np.take_along_axis(d_all, o, 1), np.take_along_axis(t_all, o, 1)
        x2 = np.take_along_axis(x_all, o[..., None], 1)
        n_changed = int((o >= p.k).sum())
    else:
        n = min(p.n_cells, p.k)
        x2, t2, d2 = x.copy(), t.copy(), d
        x2[:, :n], t2[:, :n] = donor, pt
        n_changed = n * len(targets)
    pert = model.predict_from(x2, t2, d2, ttype)
    name = p.name or f"{p.action}_{p.perturb_type}_near_{p.target_type}".replace(" ", "_")
    return _finish(adata, p, name, ctrl, pert, data.genes, {"n_cells_changed": n_changed})


class KnockoutParams(_PerturbParams):
    cell: str = Field(description="obs name of the cell whose gene is perturbed")
    gene: str = Field(description="gene to knock out or down")
    mode: Literal["knockout", "knockdown"] = Field("knockout", description="set to 0, or scale down")
    factor: float = Field(0.5, ge=0, lt=1, description="knockdown: fraction of expression kept")


@register("knockout_gene", KnockoutParams, PerturbationResult,
          intents=("knock out", "knockout", "knock down", "knockdown", "genetic perturbation",
                   "delete gene in a cell"))
def knockout_gene(adata, p: KnockoutParams) -> PerturbationResult:
    """Knock a gene out (or down) in one cell and predict the response of the cells whose context
    contains it. Writes adata.uns['de'][name] and adata.uns['perturbation'][name]."""
    from tools.generation import cell_index, contexts
    from tools.sentences import require_gene

    data, model = _fit(adata, p)
    c = cell_index(data, adata, p.cell)
    gene = require_gene(data.genes, p.gene)
    g = int(np.flatnonzero(data.genes == gene)[0])
    if data.expr[c, g] <= 0:
        raise ParameterError(f"gene {gene} is not expressed in cell {p.cell}: nothing to knock "
                             f"{'out' if p.mode == 'knockout' else 'down'}")
    pool = np.flatnonzero(data.section == data.section[c])
    idx, dist = contexts(data, pool, p.k)
    hit = (idx == c).any(1)
    if not hit.any():
        raise DataError(f"empty neighbourhood: no cell has {p.cell} among its {p.k} nearest cells")
    resp, idx, dist = pool[hit], idx[hit], dist[hit]
    x = data.expr[idx]
    x2 = x.copy()
    new = 0.0 if p.mode == "knockout" else np.log1p(p.factor * np.expm1(data.expr[c, g]))
    x2[idx == c, g] = new
    t, tt = data.type_idx[idx], data.type_idx[resp]
    ctrl, pert = model.predict_from(x, t, dist, tt), model.predict_from(x2, t, dist, tt)
    name = p.name or f"{p.mode}_{gene}_in_{p.cell}"
    return _finish(adata, p, name, ctrl, pert, data.genes,
                   {"responders": [str(n) for n in data.names[resp]], "gene": gene})
