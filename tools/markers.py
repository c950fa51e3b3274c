"""Marker genes per group (scanpy ``rank_genes_groups``) and marker-list domain annotation.

Writes ``adata.uns['markers'][groupby]`` (long table: group, gene, score, logfc, padj, pct_in,
pct_out) and, for ``annotate_domains``, ``adata.obs[f'{groupby}_label']`` and
``adata.uns['annotate_domains'][groupby]``.
"""
from __future__ import annotations

import os
import re
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from tools.errors import DataError, ParameterError, UnknownKeyError, require_obs, suggest
from tools.registry import register

CONTROL_GENES = r"^(Blank|blank|BLANK|NegControl|NegPrb)"


# ---------------------------------------------------------------- shared expression helpers
def panel_genes(adata, exclude: str | None = CONTROL_GENES) -> list[str]:
    """var_names without control probes (e.g. MERFISH 'Blank_*')."""
    return [str(g) for g in adata.var_names if not (exclude and re.search(exclude, str(g)))]


def log_expression(adata, layer: str | None = None, exclude: str | None = CONTROL_GENES):
    """(matrix, genes, transform) of log-scale expression; the user's data is not modified.

    Uses ``.X`` as is when it is already log-transformed (``uns['log1p']`` or max < 30);
    raw integer counts get normalize_total + log1p, other non-log values (e.g. volume-normalised
    MERFISH) get log1p. Genes matching the regex `exclude` (control probes) are left out.
    """
    import anndata as ad
    import scanpy as sc
    import scipy.sparse as sp

    if layer is not None and layer not in adata.layers:
        raise UnknownKeyError(f"layer '{layer}' not found{suggest(layer, adata.layers.keys())}")
    X = adata.layers[layer] if layer else adata.X
    genes = np.asarray(adata.var_names, dtype=str)
    keep = np.array([not (exclude and re.search(exclude, g)) for g in genes])
    X = X[:, keep] if keep.sum() < len(genes) else X
    genes = genes[keep]
    if genes.size == 0:
        raise DataError("no genes left after removing control probes")
    vals = X.data if sp.issparse(X) else np.asarray(X)
    if vals.size and not np.all(np.isfinite(vals)):
        raise DataError("expression contains NaN or infinite values")
    if vals.size and vals.min() < 0:
        return X, genes, "none (negative values: treated as scaled)"
    vmax = float(vals.max()) if vals.size else 0.0
    sample = vals[:100000]
    integer = bool(sample.size) and np.allclose(sample, np.round(sample))
    if (layer is None and "log1p" in adata.uns) or (not integer and vmax < 30):
        return X, genes, "none (already log scale)"
    tmp = ad.AnnData(X=sp.csr_matrix(X, dtype=np.float32) if sp.issparse(X)
                     else np.array(X, dtype=np.float32))
    if integer:
        sc.pp.normalize_total(tmp, target_sum=1e4)
        transform = "normalize_total + log1p"
    else:
        transform = "log1p"
    sc.pp.log1p(tmp)
    return tmp.X, genes, transform


def group_labels(adata, groupby: str):
    """obs column as strings (NaN -> None) and the sorted list of groups."""
    require_obs(adata, groupby)
    col = adata.obs[groupby]
    lab = np.array([None if (v is None or (isinstance(v, float) and np.isnan(v))) else str(v)
                    for v in col], dtype=object)
    groups = sorted({v for v in lab if v is not None})
    return lab, groups


def check_group(name, groups, what: str) -> str:
    name = str(name)
    folded = [g for g in groups if g.lower() == name.lower()]
    if name not in groups and len(folded) == 1:
        return folded[0]
    if name not in groups:
        raise UnknownKeyError(f"unknown {what} '{name}'{suggest(name, groups)}"
                              f" ({len(groups)} available)")
    return name


def rank_genes(adata, groupby: str, groups: list[str] | None = None, reference: str = "rest",
               method: str = "wilcoxon", layer: str | None = None,
               exclude: str | None = CONTROL_GENES, min_cells: int = 3):
    """scanpy rank_genes_groups on a temporary AnnData; returns (long DataFrame, transform)."""
    import anndata as ad
    import pandas as pd
    import scanpy as sc

    lab, all_groups = group_labels(adata, groupby)
    explicit = groups is not None
    groups = [check_group(g, all_groups, f"group of '{groupby}'") for g in (groups or all_groups)]
    if reference != "rest":
        reference = check_group(reference, all_groups, f"reference group of '{groupby}'")
        if reference in groups:
            raise ParameterError(f"group and reference are the same: '{reference}'")
    counts = pd.Series(lab[lab != None]).value_counts()  # noqa: E711
    small = [g for g in groups + ([reference] if reference != "rest" else [])
             if counts.get(g, 0) < min_cells]
    if small and not explicit and reference == "rest":  # all groups asked: skip tiny ones
        groups, small = [g for g in groups if g not in small], []
    if not groups:
        raise ParameterError(f"no group of '{groupby}' has {min_cells} or more cells")
    if small:
        raise ParameterError(f"too few cells (< {min_cells}) in {groupby} = {', '.join(small)}")
    if reference == "rest" and len(all_groups) < 2:
        raise ParameterError(f"'{groupby}' has a single group; nothing to compare against")
    X, genes, transform = log_expression(adata, layer, exclude)
    # groups with fewer cells than min_cells cannot be part of 'rest' comparisons: keep them
    # in the background (rest), but scanpy needs >= 2 cells per category; mark tiny ones 'other'
    keep = lab != None  # noqa: E711
    tiny = set(counts[counts < 2].index)
    obs_lab = np.array([("__other__" if v in tiny else v) for v in lab[keep]], dtype=object)
    tmp = ad.AnnData(X=X[np.where(keep)[0]], obs=pd.DataFrame(
        {"g": pd.Categorical(obs_lab)}, index=np.asarray(adata.obs_names)[keep]))
    tmp.var_names = genes
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # 0/0 for genes absent from a group
        sc.tl.rank_genes_groups(tmp, "g", groups=groups, reference=reference, method=method,
                                pts=True, key_added="rgg", use_raw=False,
                                tie_correct=method == "wilcoxon")
    frames = []
    for g in groups:
        df = sc.get.rank_genes_groups_df(tmp, group=g, key="rgg")
        df.insert(0, "group", g)
        frames.append(df)
    df = pd.concat(frames, ignore_index=True)
    if "pct_nz_reference" not in df:  # scanpy computes it only against 'rest'
        Xr = tmp[tmp.obs["g"] == reference].X
        pct = dict(zip(genes, np.asarray((Xr > 0).mean(0)).ravel()))
        df["pct_nz_reference"] = df["names"].map(pct)
    df = df.rename(columns={
        "names": "gene", "scores": "score", "logfoldchanges": "logfc", "pvals": "pval",
        "pvals_adj": "padj", "pct_nz_group": "pct_in", "pct_nz_reference": "pct_out"})
    return df, transform


# ---------------------------------------------------------------- marker genes
class MarkerParams(BaseModel):
    dataset: str = Field("data", description="id of a loaded dataset")
    groupby: str = Field(description="obs column with the groups (cell type, domain ...)")
    groups: list[str] | None = Field(None, description="groups to report (default: all)")
    n_top: int = Field(5, ge=1, le=50, description="marker genes reported per group")
    method: Literal["wilcoxon", "t-test"] = Field("wilcoxon", description="test")
    layer: str | None = Field(None, description="layer to use instead of .X")
    min_cells: int = Field(3, ge=2, le=1000, description="minimum cells per group")


class MarkerGene(BaseModel):
    gene: str
    logfc: float
    padj: float
    pct_in: float
    pct_out: float


class MarkerResult(BaseModel):
    key: str
    n_genes_tested: int
    transform: str
    markers: dict[str, list[MarkerGene]]


@register("marker_genes", MarkerParams, MarkerResult,
          intents=("marker genes", "markers of", "genes characterise",
                   "top genes per", "what genes define", "what distinguishes",
                   "what makes different", "specific genes", "genes mark", "marks",
                   "marker of", "specifically expressed", "highly expressed in", "expressed most in",
                   "markers"))
def marker_genes(adata, p: MarkerParams) -> MarkerResult:
    """Marker genes per group (group vs rest, scanpy). Writes adata.uns['markers'][groupby]."""
    df, transform = rank_genes(adata, p.groupby, p.groups, "rest", p.method, p.layer,
                               min_cells=p.min_cells)
    up = df[df["logfc"] > 0].sort_values(["group", "score"], ascending=[True, False])
    table = up.groupby("group", sort=False).head(100).reset_index(drop=True)
    adata.uns.setdefault("markers", {})[p.groupby] = table
    out = {}
    for g, sub in table.groupby("group", sort=True):
        out[g] = [MarkerGene(gene=r.gene, logfc=round(float(r.logfc), 3),
                             padj=float(r.padj), pct_in=round(float(r.pct_in), 3),
                             pct_out=round(float(r.pct_out), 3))
                  for r in sub.head(p.n_top).itertuples()]
    return MarkerResult(key=f"markers/{p.groupby}", n_genes_tested=int(df["gene"].nunique()),
                        transform=transform, markers=out)


# ---------------------------------------------------------------- domain annotation
TYPE_COLUMNS = ("cell_type", "cell type", "celltype", "cell_name", "cellname", "label", "type")
GENE_COLUMNS = ("gene", "genes", "official gene symbol", "symbol", "marker", "markers",
                "genesymbolmore1")


def read_marker_lists(path: str, type_column: str | None = None,
                      gene_column: str | None = None,
                      where: dict[str, str] | None = None) -> dict[str, list[str]]:
    """Marker lists (label -> genes) from a GMT or a TSV/CSV table (long or comma lists)."""
    import pandas as pd

    from tools.genesets import read_gmt

    path = os.fspath(path)
    if path.lower().endswith((".gmt", ".gmt.gz")):
        return read_gmt(path)
    if not os.path.isfile(path):
        raise DataError(f"marker file not found: {path}")
    sep = "," if path.lower().endswith((".csv", ".csv.gz")) else "\t"
    df = pd.read_csv(path, sep=sep, dtype=str)
    lower = {c.lower(): c for c in df.columns}

    def pick(given, options, what):
        if given:
            if given not in df.columns:
                raise UnknownKeyError(f"column '{given}' not in {path}"
                                      f"{suggest(given, df.columns)}")
            return given
        for o in options:
            if o in lower:
                return lower[o]
        raise DataError(f"cannot find a {what} column in {path} (columns: "
                        f"{', '.join(df.columns[:12])}); name it with {what}_column")

    tcol, gcol = pick(type_column, TYPE_COLUMNS, "type"), pick(gene_column, GENE_COLUMNS, "gene")
    for col, val in (where or {}).items():
        if col not in df.columns:
            raise UnknownKeyError(f"column '{col}' not in {path}{suggest(col, df.columns)}")
        df = df[df[col].astype(str).str.contains(str(val), case=False, regex=False)]
    out: dict[str, set] = {}
    for t, genes in zip(df[tcol], df[gcol]):
        if isinstance(t, str) and isinstance(genes, str):
            out.setdefault(t, set()).update(g.strip() for g in genes.split(",") if g.strip())
    if not out:
        raise DataError(f"no marker lists read from {path} (after filters {where or {}})")
    return {k: sorted(v) for k, v in out.items()}


class AnnotateParams(BaseModel):
    dataset: str = Field("data", description="id of a loaded dataset")
    groupby: str = Field("domain", description="obs column with the domains / clusters")
    markers: str = Field(description="path to marker lists: GMT, or TSV/CSV with type and gene "
                                     "columns (genes one per row or comma-separated)")
    type_column: str | None = Field(None, description="label column in a marker table")
    gene_column: str | None = Field(None, description="gene column in a marker table")
    where: dict[str, str] | None = Field(None, description="keep table rows whose column "
                                         "contains the value, e.g. {'organ': 'Brain'}")
    orthologs: str | None = Field(None, description="human-mouse orthologs TSV; default "
                                  "case-folding when species differ")
    n_markers: int = Field(20, ge=3, le=200, description="top markers per domain to match")
    alpha: float = Field(0.05, gt=0, le=1, description="adjusted p-value to accept a label")
    method: Literal["wilcoxon", "t-test"] = Field("wilcoxon", description="marker test")


class DomainLabel(BaseModel):
    group: str
    label: str
    overlap: int
    genes: list[str]
    pval: float
    padj: float
    confident: bool


class AnnotateResult(BaseModel):
    key: str
    n_lists: int
    n_lists_in_panel: int
    mapping: str
    labels: list[DomainLabel]


def score_marker_lists(markers: dict[str, list[str]], lists: dict[str, list[str]],
                       universe: list[str]) -> "object":
    """Hypergeometric overlap of each group's markers with each list (long DataFrame)."""
    import pandas as pd
    from scipy.stats import false_discovery_control, hypergeom

    uni = set(universe)
    rows = []
    for grp, mk in markers.items():
        mk = set(mk) & uni
        for lab, genes in lists.items():
            gs = set(genes) & uni
            k = len(mk & gs)
            p = float(hypergeom.sf(k - 1, len(uni), len(gs), len(mk))) if k else 1.0
            rows.append((grp, lab, k, sorted(mk & gs), p))
    df = pd.DataFrame(rows, columns=["group", "label", "overlap", "genes", "pval"])
    df["padj"] = df.groupby("group")["pval"].transform(lambda s: false_discovery_control(s))
    return df


@register("annotate_domains", AnnotateParams, AnnotateResult,
          intents=("annotate domains", "annotate clusters", "label the domains",
                   "which cell type is each domain", "assign cell types"))
def annotate_domains(adata, p: AnnotateParams, marker_lists: dict | None = None) -> AnnotateResult:
    """Label each domain by the user's marker list that best overlaps its markers.

    Hypergeometric overlap of the domain's top markers with each list. Writes
    adata.obs[f'{groupby}_label'] and adata.uns['annotate_domains'][groupby].
    """
    import pandas as pd

    from tools.genesets import map_gene_sets

    lists = marker_lists or read_marker_lists(p.markers, p.type_column, p.gene_column, p.where)
    df, _ = rank_genes(adata, p.groupby, None, "rest", p.method)
    universe = sorted(df["gene"].unique())
    mapped, info = map_gene_sets(lists, universe, p.orthologs, source=f"marker file {p.markers}")
    up = df[(df["logfc"] > 0)].sort_values(["group", "score"], ascending=[True, False])
    mk = {g: list(s["gene"].head(p.n_markers)) for g, s in up.groupby("group", sort=True)}
    scores = score_marker_lists(mk, mapped, universe)
    best = scores.sort_values(["group", "pval", "overlap"], ascending=[True, True, False])
    best = best.groupby("group", sort=True).head(1)
    labels = [DomainLabel(group=r.group, label=r.label if r.overlap else "unassigned",
                          overlap=int(r.overlap), genes=r.genes,
                          pval=float(r.pval), padj=float(r.padj),
                          confident=bool(r.padj < p.alpha and r.overlap > 0))
              for r in best.itertuples()]
    lab_map = {d.group: (d.label if d.confident else "unassigned") for d in labels}
    lab, _ = group_labels(adata, p.groupby)
    adata.obs[f"{p.groupby}_label"] = pd.Categorical(
        [lab_map.get(v, "unassigned") if v is not None else None for v in lab])
    adata.uns.setdefault("annotate_domains", {})[p.groupby] = scores.assign(
        genes=scores["genes"].map(",".join))
    return AnnotateResult(key=f"{p.groupby}_label", n_lists=info["n_sets"],
                          n_lists_in_panel=info["n_sets_overlapping"], mapping=info["mapping"],
                          labels=labels)
