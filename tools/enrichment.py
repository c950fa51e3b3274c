"""Differential expression (scanpy), GSEA prerank and over-representation (gseapy, offline).

Keys: ``adata.uns['de'][name]`` (DataFrame: gene, score, logfc, pval, padj, pct_in, pct_out),
``adata.uns['gsea'][name]`` and ``adata.uns['ora'][name]`` (gseapy result tables).
Gene sets come from GMT files the user names (.gmt or .gmt.gz); symbols are mapped to the data's
species by orthologs or case-folding (see :mod:`tools.genesets`). Enrichr's online functions are
never used.
"""
from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, Field

from tools.errors import DataError, ParameterError, UnknownKeyError, suggest
from tools.registry import register


class GeneStat(BaseModel):
    gene: str
    logfc: float
    padj: float


# ---------------------------------------------------------------- differential expression
class DEParams(BaseModel):
    dataset: str = Field("data", description="id of a loaded dataset")
    groupby: str = Field(description="obs column holding the groups")
    group: str = Field(description="the group to test")
    reference: str = Field("rest", description="group to compare against, or 'rest'")
    method: Literal["wilcoxon", "t-test"] = Field("wilcoxon", description="scanpy test")
    layer: str | None = Field(None, description="layer to use instead of .X")
    name: str | None = Field(None, description="key under uns['de'] (default group_vs_reference)")
    n_top: int = Field(10, ge=1, le=50, description="top up / down genes reported")
    alpha: float = Field(0.05, gt=0, le=1, description="adjusted p-value for counting DE genes")
    min_cells: int = Field(3, ge=2, le=1000, description="minimum cells per group")


class DEResult(BaseModel):
    key: str
    groupby: str
    group: str
    reference: str
    method: str
    transform: str
    n_cells_group: int
    n_cells_reference: int
    n_genes_tested: int
    n_up: int
    n_down: int
    top_up: list[GeneStat]
    top_down: list[GeneStat]


def _top(df, n, up: bool):
    sub = df[df["logfc"] > 0] if up else df[df["logfc"] < 0]
    sub = sub.sort_values("score", ascending=not up).head(n)
    return [GeneStat(gene=r.gene, logfc=round(float(r.logfc), 3), padj=float(r.padj))
            for r in sub.itertuples()]


@register("differential_expression", DEParams, DEResult,
          intents=("differentially expressed", "differential expression", "de genes",
                   "upregulated", "downregulated", "compare expression between", "genes higher in",
                   "genes lower in"))
def differential_expression(adata, p: DEParams) -> DEResult:
    """DE of one group vs the rest or a reference group; writes adata.uns['de'][name]."""
    from tools.markers import group_labels, rank_genes

    df, transform = rank_genes(adata, p.groupby, [p.group], p.reference, p.method, p.layer,
                               min_cells=p.min_cells)
    df = df.drop(columns="group")
    df = df[(df["pct_in"] > 0) | (df["pct_out"] > 0)].reset_index(drop=True)  # testable genes
    lab, _ = group_labels(adata, p.groupby)
    group = str(p.group)
    n_ref = int((lab == p.reference).sum()) if p.reference != "rest" else int(
        sum(v is not None and v != group for v in lab))
    name = (p.name or f"{group}_vs_{p.reference}").replace("/", "_")  # h5ad-safe key
    adata.uns.setdefault("de", {})[name] = df
    sig = df["padj"] < p.alpha
    return DEResult(key=f"de/{name}", groupby=p.groupby, group=group, reference=p.reference,
                    method=p.method, transform=transform,
                    n_cells_group=int((lab == group).sum()), n_cells_reference=n_ref,
                    n_genes_tested=len(df), n_up=int((sig & (df["logfc"] > 0)).sum()),
                    n_down=int((sig & (df["logfc"] < 0)).sum()),
                    top_up=_top(df, p.n_top, True), top_down=_top(df, p.n_top, False))


_ALIASES = {
    "gene": ("gene", "genes", "names", "symbol", "gene_symbol", "name"),
    "score": ("score", "scores", "stat", "statistic", "t", "z"),
    "logfc": ("logfc", "logfoldchanges", "log_fold_change", "log2fc", "lfc", "log2foldchange",
              "logfoldchange", "difference", "diff"),
    "padj": ("padj", "pvals_adj", "fdr", "qval", "adj_pval", "p_adj"),
}


def de_from_table(table) -> "object":
    """A DE table made elsewhere (DataFrame or CSV/TSV path) -> DataFrame with columns gene,
    score (ranking metric; logfc when no score) and, if present, logfc and padj."""
    import numpy as np
    import pandas as pd

    if isinstance(table, (str, os.PathLike)):
        path = os.fspath(table)
        if not os.path.isfile(path):
            raise DataError(f"DE table not found: {path}")
        table = pd.read_csv(path, sep=None, engine="python")
    if not isinstance(table, pd.DataFrame):
        raise DataError("a DE table must be a pandas DataFrame or a CSV/TSV path")
    df = table.copy()
    if "gene" not in {c.lower() for c in df.columns} and not isinstance(df.index, pd.RangeIndex):
        df = df.rename_axis("gene").reset_index()
    lower = {c.lower(): c for c in df.columns}
    out = {}
    for std, names in _ALIASES.items():
        col = next((lower[n] for n in names if n in lower), None)
        if col is not None:
            out[std] = df[col]
    if "gene" not in out or not ({"score", "logfc"} & set(out)):
        raise DataError(f"DE table needs a gene column and a score or logfc column; "
                        f"got {', '.join(map(str, df.columns))}")
    res = pd.DataFrame(out)
    if "score" not in res:
        res["score"] = res["logfc"]
    res["gene"] = res["gene"].astype(str)
    for c in ("score", "logfc", "padj"):
        if c in res:
            res[c] = pd.to_numeric(res[c], errors="coerce")
    res = res[np.isfinite(res["score"])]
    res = res.loc[res["score"].abs().groupby(res["gene"]).idxmax()]  # one row per gene
    if len(res) < 2:
        raise DataError("DE table has fewer than 2 genes with a finite score")
    return res.sort_values("score", ascending=False).reset_index(drop=True)


def _de_table(adata, name: str | None):
    """A stored DE table by name; None = the most recently stored one."""
    tables = adata.uns.get("de", {})
    if name is None:
        if not tables:
            raise ParameterError("no DE table yet: run differential_expression first")
        name = list(tables)[-1]
    if name not in tables:
        raise UnknownKeyError(f"no DE table '{name}' in uns['de']{suggest(name, tables)}"
                              f" (available: {', '.join(tables) or 'none'})")
    return de_from_table(tables[name])


def _load_sets(gene_sets, genes, orthologs):
    from tools.genesets import map_gene_sets, read_gmt

    if isinstance(gene_sets, dict):
        return map_gene_sets(gene_sets, genes, orthologs, source="the gene sets given")
    return map_gene_sets(read_gmt(gene_sets), genes, orthologs,
                         source=f"gene-set file {gene_sets}")


# ---------------------------------------------------------------- GSEA prerank
class Term(BaseModel):
    term: str
    nes: float
    pval: float
    fdr: float
    n_genes: int
    lead_genes: list[str]


class GSEAParams(BaseModel):
    dataset: str = Field("data", description="id of a loaded dataset")
    de: str | None = Field(None, description="name of a DE table in uns['de'] "
                           "(differential_expression or a perturbation); default: the latest")
    gene_sets: str = Field(description="path to a GMT gene-set file (.gmt or .gmt.gz)")
    orthologs: str | None = Field(None, description="human-mouse orthologs TSV (HCOP format); "
                                  "default: case-folding when species differ")
    rank_by: Literal["score", "logfc"] = Field("score", description="ranking metric")
    permutations: int = Field(1000, ge=100, le=5000, description="gene-set permutations")
    min_size: int = Field(5, ge=2, le=500, description="smallest gene set (genes in data)")
    max_size: int = Field(500, ge=5, le=5000, description="largest gene set (genes in data)")
    seed: int = Field(0, description="random seed for permutations")
    n_top: int = Field(10, ge=1, le=50, description="terms reported")


class GSEAResult(BaseModel):
    key: str
    n_genes_ranked: int
    n_sets_tested: int
    overlap_genes: int
    mapping: str
    gene_set_species: str
    data_species: str
    n_fdr_below_0_25: int
    top_terms: list[Term]


def prerank(table, gene_sets, *, orthologs=None, rank_by="score", permutations=1000,
            min_size=5, max_size=500, seed=0, n_top=10):
    """GSEA prerank of a DE table (see de_from_table) -> (GSEAResult without key, res2d)."""
    import gseapy

    df = de_from_table(table)
    if rank_by not in df:
        raise ParameterError(f"DE table has no '{rank_by}' column")
    rnk = df.set_index("gene")[rank_by].dropna().sort_values(ascending=False)
    sets, info = _load_sets(gene_sets, rnk.index, orthologs)
    biggest = max(len(v) for v in sets.values())
    if biggest < min_size:
        raise ParameterError(f"no gene set has min_size={min_size} genes in the data (largest "
                             f"overlap {biggest}); lower min_size")
    res = gseapy.prerank(rnk=rnk, gene_sets=sets, min_size=min_size, max_size=max_size,
                         permutation_num=permutations, seed=seed, threads=1, outdir=None,
                         no_plot=True, verbose=False).res2d
    res = res.rename(columns={"NES": "nes", "NOM p-val": "pval", "FDR q-val": "fdr",
                              "Lead_genes": "lead_genes", "Term": "term", "ES": "es"})
    for c in ("nes", "pval", "fdr", "es"):
        res[c] = res[c].astype(float)
    res["n_genes"] = res["term"].map(lambda t: len(sets[t]))
    res = res.sort_values(["fdr", "pval", "nes"], key=lambda s: s.abs() if s.name == "nes"
                          else s, ascending=[True, True, False]).reset_index(drop=True)
    top = [Term(term=r.term, nes=round(r.nes, 3), pval=r.pval, fdr=r.fdr, n_genes=r.n_genes,
                lead_genes=str(r.lead_genes).split(";")[:10]) for r in res.head(n_top).itertuples()]
    out = GSEAResult(key="", n_genes_ranked=len(rnk), n_sets_tested=len(res),
                     overlap_genes=info["overlap_genes"], mapping=info["mapping"],
                     gene_set_species=info["gene_set_species"],
                     data_species=info["data_species"],
                     n_fdr_below_0_25=int((res["fdr"] < 0.25).sum()), top_terms=top)
    return out, res.drop(columns=[c for c in ("Name",) if c in res])


@register("gsea_prerank", GSEAParams, GSEAResult,
          intents=("gsea", "gene set enrichment", "pathway enrichment", "prerank",
                   "enriched pathways", "hallmark"))
def gsea_prerank(adata, p: GSEAParams) -> GSEAResult:
    """GSEA prerank (gseapy) of a stored DE table on a GMT file. Writes adata.uns['gsea'][name]."""
    res, table = prerank(_de_table(adata, p.de), p.gene_sets, orthologs=p.orthologs,
                         rank_by=p.rank_by, permutations=p.permutations, min_size=p.min_size,
                         max_size=p.max_size, seed=p.seed, n_top=p.n_top)
    de = p.de or list(adata.uns["de"])[-1]
    name = f"{de}:{os.path.basename(p.gene_sets)}".replace("/", "_")
    adata.uns.setdefault("gsea", {})[name] = table.astype({"lead_genes": str})
    res.key = f"gsea/{name}"
    return res


# ---------------------------------------------------------------- over-representation
class ORATerm(BaseModel):
    term: str
    overlap: str
    pval: float
    padj: float
    genes: list[str]


class ORAParams(BaseModel):
    dataset: str = Field("data", description="id of a loaded dataset")
    gene_sets: str = Field(description="path to a GMT gene-set file (.gmt or .gmt.gz)")
    genes: list[str] | None = Field(None, description="genes to test (else taken from `de`)")
    de: str | None = Field(None, description="DE table in uns['de'] to take genes from "
                           "(default when no genes are given: the latest)")
    direction: Literal["up", "down"] = Field("up", description="DE genes up or down")
    alpha: float = Field(0.05, gt=0, le=1, description="adjusted p-value for DE genes")
    min_logfc: float = Field(0.5, ge=0, description="minimum |logFC| for DE genes")
    max_genes: int = Field(100, ge=1, le=2000, description="at most this many DE genes")
    background: Literal["data", "gene_sets"] = Field(
        "data", description="universe: the data's genes (right for most data) or every gene "
        "in the gene-set file (genome-wide; biased for targeted panels)")
    orthologs: str | None = Field(None, description="human-mouse orthologs TSV (HCOP format)")
    n_top: int = Field(10, ge=1, le=50, description="terms reported")


class ORAResult(BaseModel):
    key: str
    n_query: int
    n_background: int
    overlap_genes: int
    mapping: str
    n_padj_below_0_05: int
    top_terms: list[ORATerm]


def overrepresentation_test(genes, background, gene_sets, *, orthologs=None, n_top=10,
                            universe: str = "data"):
    """Hypergeometric ORA (gseapy.enrich) of `genes` within `background` -> (ORAResult, table).

    universe='gene_sets' tests against every gene of the (mapped) gene sets plus `background`.
    """
    import gseapy

    background = sorted({str(g) for g in background})
    bg = set(background)
    missing = [g for g in genes if g not in bg]
    if missing:
        raise UnknownKeyError(f"gene '{missing[0]}' not in the data"
                              f"{suggest(missing[0], background)}")
    genes = sorted(set(genes))
    if not genes:
        raise ParameterError("no genes to test for over-representation")
    sets, info = _load_sets(gene_sets, background, orthologs)
    if universe == "gene_sets":
        from tools.genesets import gene_mapper, guess_species, read_gmt

        raw = gene_sets if isinstance(gene_sets, dict) else read_gmt(gene_sets)
        allg = {g for v in raw.values() for g in v}
        fn, _ = gene_mapper(guess_species(allg), background, orthologs)
        # keep the genome-wide genes; dataset genes replace their mapped counterparts
        mapped = {g for g in allg if fn(g)}
        sets = {k: sorted({t for g in v for t in (fn(g) or [g])}) for k, v in raw.items()}
        background = sorted((allg - mapped) | set(background))
    res = gseapy.enrich(gene_list=genes, gene_sets=sets, background=background, outdir=None,
                        no_plot=True, verbose=False).res2d
    res = res.rename(columns={"Term": "term", "Overlap": "overlap", "P-value": "pval",
                              "Adjusted P-value": "padj", "Genes": "genes"})
    res = res.sort_values(["pval", "term"]).reset_index(drop=True)
    top = [ORATerm(term=r.term, overlap=str(r.overlap), pval=float(r.pval), padj=float(r.padj),
                   genes=str(r.genes).split(";")) for r in res.head(n_top).itertuples()]
    out = ORAResult(key="", n_query=len(genes), n_background=len(background),
                    overlap_genes=info["overlap_genes"], mapping=info["mapping"],
                    n_padj_below_0_05=int((res["padj"] < 0.05).sum()), top_terms=top)
    return out, res


@register("overrepresentation", ORAParams, ORAResult,
          intents=("over-representation", "overrepresentation", "over-represented",
                   "overrepresented", "enrichment of these genes",
                   "go enrichment",
                   "enriched go terms", "pathway enrichment of genes"))
def overrepresentation(adata, p: ORAParams) -> ORAResult:
    """Over-representation (hypergeometric, gseapy) of genes or DE genes on a GMT file.

    The background is the dataset's genes by default. Writes adata.uns['ora'][name].
    """
    from tools.markers import panel_genes

    if p.genes:
        genes, background, src = p.genes, panel_genes(adata), "genes"
    else:
        de = p.de or (list(adata.uns.get("de", {})) or [None])[-1]
        df = _de_table(adata, de)
        if "padj" not in df or "logfc" not in df:
            raise DataError(f"DE table '{de}' lacks padj/logfc; pass genes instead")
        sign = 1 if p.direction == "up" else -1
        sel = df[(df["padj"] < p.alpha) & (sign * df["logfc"] >= p.min_logfc)]
        sel = sel.sort_values("score", ascending=p.direction == "down").head(p.max_genes)
        if sel.empty:
            raise ParameterError(f"no {p.direction} genes in '{de}' at padj < {p.alpha} and "
                                 f"|logFC| >= {p.min_logfc}")
        genes, background, src = list(sel["gene"]), list(df["gene"]), f"{de}:{p.direction}"
    res, table = overrepresentation_test(genes, background, p.gene_sets, orthologs=p.orthologs,
                                         n_top=p.n_top, universe=p.background)
    name = f"{src}:{os.path.basename(p.gene_sets)}".replace("/", "_")
    adata.uns.setdefault("ora", {})[name] = table
    res.key = f"ora/{name}"
    return res
