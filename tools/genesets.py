"""Gene-set files and species-aware gene matching (shared by enrichment, markers, communication).

Gene symbols are matched to the dataset's naming: mouse-style ('Gfap') vs human-style ('GFAP').
With a human-mouse orthologs table (HGNC HCOP format: human_symbol, mouse_symbol, support_n)
symbols are mapped through orthologs (keeping the best-supported partners); without it, symbols
are matched by case-folding ('GFAP' -> 'Gfap'), a documented fallback that misses renamed genes.
"""
from __future__ import annotations

import gzip
import os
from functools import lru_cache

from tools.errors import DataError, ParameterError


def guess_species(genes) -> str:
    """'human' when most symbols are upper-case, 'mouse' when most are title-case."""
    upper = title = 0
    for g in genes:
        g = str(g)
        if not any(c.isalpha() for c in g):
            continue
        if g.upper() == g:
            upper += 1
        else:
            title += 1
    return "human" if upper >= title else "mouse"


def _open_text(path: str):
    return gzip.open(path, "rt") if path.endswith(".gz") else open(path)


def read_gmt(path: str) -> dict[str, list[str]]:
    """Gene sets from a .gmt or .gmt.gz file (name -> genes)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"gene-set file not found: {path}")
    low = path.lower()
    if not (low.endswith(".gmt") or low.endswith(".gmt.gz")):
        raise DataError(f"gene-set file must be .gmt or .gmt.gz: {path}")
    if low.endswith(".gmt"):
        import gseapy

        sets = gseapy.read_gmt(path)
    else:
        sets = {}
        with _open_text(path) as fh:
            for line in fh:
                parts = line.rstrip("\n").split("\t")
                if len(parts) > 2:
                    sets[parts[0]] = [g for g in parts[2:] if g]
    sets = {k: v for k, v in sets.items() if v}
    if not sets:
        raise DataError(f"no gene sets found in {path}")
    return sets


@lru_cache(maxsize=4)
def read_orthologs(path: str) -> dict[str, dict[str, list[str]]]:
    """{'human_to_mouse': {...}, 'mouse_to_human': {...}} from an HCOP-style TSV(.gz).

    For each symbol only the partners with the highest support count are kept.
    """
    import pandas as pd

    if not os.path.isfile(path):
        raise DataError(f"orthologs file not found: {path}")
    df = pd.read_csv(path, sep="\t", dtype=str)
    need = {"human_symbol", "mouse_symbol"}
    if not need <= set(df.columns):
        raise DataError(f"orthologs file {path} lacks columns {sorted(need - set(df.columns))}")
    df = df.dropna(subset=list(need))
    df["_s"] = pd.to_numeric(df.get("support_n", 1), errors="coerce").fillna(1)
    out = {}
    for src, dst, key in (("human_symbol", "mouse_symbol", "human_to_mouse"),
                          ("mouse_symbol", "human_symbol", "mouse_to_human")):
        best = df[df["_s"] == df.groupby(src)["_s"].transform("max")]
        out[key] = best.groupby(src)[dst].agg(lambda s: sorted(set(s))).to_dict()
    return out


def gene_mapper(source_species: str, data_genes, orthologs: str | None = None):
    """A function symbol -> list of dataset genes, and the method name used."""
    data_genes = [str(g) for g in data_genes]
    data_set = set(data_genes)
    target = guess_species(data_genes)
    folded: dict[str, list[str]] = {}
    for g in data_genes:
        folded.setdefault(g.upper(), []).append(g)
    if source_species == target:
        return (lambda g: [g] if g in data_set else folded.get(g.upper(), [])), "identity"
    if orthologs:
        table = read_orthologs(os.fspath(orthologs))[f"{source_species}_to_{target}"]
        return (lambda g: [t for t in table.get(g, []) if t in data_set]), "orthologs"
    return (lambda g: folded.get(g.upper(), [])), "case-folding"


def map_gene_sets(sets: dict[str, list[str]], data_genes, orthologs: str | None = None,
                  source: str = "gene sets"):
    """Translate gene sets into the dataset's symbols.

    Returns (sets restricted to dataset genes, info dict with species, method and overlap).
    Raises ParameterError naming `source` when no dataset gene is covered.
    """
    all_genes = {g for v in sets.values() for g in v}
    species = guess_species(all_genes)
    fn, method = gene_mapper(species, data_genes, orthologs)
    out = {}
    for name, genes in sets.items():
        mapped = sorted({t for g in genes for t in fn(g)})
        if mapped:
            out[name] = mapped
    overlap = len({g for v in out.values() for g in v})
    info = {"gene_set_species": species, "data_species": guess_species(data_genes),
            "mapping": method, "n_sets": len(sets), "n_sets_overlapping": len(out),
            "overlap_genes": overlap}
    if overlap == 0:
        raise ParameterError(
            f"{source} has no overlap with the data's genes (overlap 0 of {len(set(data_genes))}"
            f" genes; {species} symbols mapped by {method})"
        )
    return out, info
