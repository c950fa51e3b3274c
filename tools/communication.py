"""Ligand-receptor analysis near vs far: do cells close to a cell type express the partners of
its ligands more than cells far from it?

Cells within `radius` µm of any cell of the sender type (KD-tree on ``obsm['spatial']``, per
section) are "near", the other receiver cells "far". For each ligand-receptor pair,
score = mean ligand in the sender type x mean receptor in near (or far) receivers (complexes:
the minimum over subunits, as CellPhoneDB / LIANA do); the near - far difference is tested by
permuting near/far labels among receivers (seeded). Pairs come from the resource shipped inside
the ``liana`` package (``liana/resource/omni_resource.csv``; no download) or from a table the
user names. Writes ``adata.obs['lr_zone']`` and ``adata.uns['ligand_receptor'][name]``.
"""
from __future__ import annotations

import os
import re
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from tools.errors import DataError, ParameterError, UnknownKeyError, require_obsm, suggest
from tools.registry import register

LIGAND_COLS = ("ligand.symbol", "ligand", "source_genesymbol", "ligand_symbol", "source")
RECEPTOR_COLS = ("receptor.symbol", "receptor", "target_genesymbol", "receptor_symbol", "target")


def liana_resource_path() -> str:
    """Path of liana's bundled omni_resource.csv, found without importing liana (slow)."""
    import importlib.util

    spec = importlib.util.find_spec("liana")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the 'liana' package is not installed; pass lr_table= instead")
    path = os.path.join(list(spec.submodule_search_locations)[0], "resource",
                        "omni_resource.csv")
    if not os.path.isfile(path):
        raise DataError(f"liana resource file missing: {path}")
    return path


def read_lr_pairs(lr_table: str | None = None, resource: str | None = "consensus"):
    """DataFrame (ligand, receptor) from liana's resource or a user CSV/TSV table
    (filtered to `resource` when the table has a 'resource' column)."""
    import pandas as pd

    path = lr_table or liana_resource_path()
    if not os.path.isfile(path):
        raise DataError(f"ligand-receptor table not found: {path}")
    sep = "\t" if re.search(r"\.(tsv|txt)(\.gz)?$", path.lower()) else ","
    df = pd.read_csv(path, sep=sep, dtype=str)
    lower = {c.lower(): c for c in df.columns}
    lcol = next((lower[c] for c in LIGAND_COLS if c in lower), None)
    rcol = next((lower[c] for c in RECEPTOR_COLS if c in lower), None)
    if lcol is None or rcol is None:
        raise DataError(f"{path} needs ligand and receptor columns (has "
                        f"{', '.join(df.columns[:10])})")
    if "resource" in lower and resource is not None:
        names = sorted(df[lower["resource"]].dropna().unique())
        if resource not in names:
            raise UnknownKeyError(f"resource '{resource}' not in {os.path.basename(path)}"
                                  f"{suggest(resource, names)}")
        df = df[df[lower["resource"]] == resource]
    out = df[[lcol, rcol]].dropna().set_axis(["ligand", "receptor"], axis=1)
    return out.drop_duplicates().reset_index(drop=True)


def _subunits(s: str) -> list[str]:
    return [g for g in re.split(r"[_+,\s]+", s) if g]


class LRParams(BaseModel):
    dataset: str = Field("data", description="id of a loaded dataset")
    label_key: str = Field(description="obs column with cell types")
    sender: str = Field(description="cell type whose ligands (or receptors) are considered")
    radius: float = Field(30.0, gt=0, le=2000, description="near = within this many µm of a "
                                                           "sender cell")
    receiver: str | None = Field(None, description="receiver cell type (default: all others)")
    direction: Literal["sender_to_neighbours", "neighbours_to_sender"] = Field(
        "sender_to_neighbours", description="ligand in the sender and receptor in neighbours, "
        "or ligand in neighbours and receptor in the sender")
    section_key: str | None = Field("auto", description="obs column of sections (distances are "
                                    "measured within a section); auto = the first of section, "
                                    "slice_id, slice, bregma, library_id, sample present; None = one section")
    resource: str = Field("auto", description="liana resource name (consensus, mouseconsensus,"
                          " cellphonedb, ...); auto = consensus for the data's species")
    lr_table: str | None = Field(None, description="path to a ligand-receptor CSV/TSV instead")
    orthologs: str | None = Field(None, description="human-mouse orthologs TSV (HCOP format); "
                                  "default case-folding when species differ")
    n_perms: int = Field(1000, ge=100, le=10000, description="near/far label permutations")
    seed: int = Field(0, description="random seed")
    min_expr_frac: float = Field(0.1, ge=0, le=1, description="fraction of sender cells that "
                                 "must express the sender-side gene(s)")
    min_cells: int = Field(10, ge=1, le=10000, description="minimum near and far cells")
    layer: str | None = Field(None, description="layer to use instead of .X")
    n_top: int = Field(10, ge=1, le=100, description="pairs reported")


class LRPair(BaseModel):
    ligand: str
    receptor: str
    sender_mean: float
    near_mean: float
    far_mean: float
    score_near: float
    score_far: float
    pval: float
    fdr: float


class LRResult(BaseModel):
    key: str
    resource: str
    mapping: str
    n_sender: int
    n_near: int
    n_far: int
    n_pairs_resource: int
    n_pairs_in_panel: int
    n_pairs_tested: int
    n_fdr_below_0_05: int
    top_pairs: list[LRPair]


SECTION_COLUMNS = ("section", "slice_id", "slice", "bregma", "library_id", "sample")


def section_column(adata, section_key: str | None) -> str | None:
    """`section_key`, or for "auto" the first of SECTION_COLUMNS present in obs (None if none)."""
    if section_key == "auto":
        return next((c for c in SECTION_COLUMNS if c in adata.obs), None)
    return section_key


def near_far(adata, labels, sender, receiver, radius, section_key=None):
    """Zone per cell: 'sender', 'near', 'far' or None (not a receiver); distances within a
    section (`section_key`, "auto" as in section_column)."""
    from scipy.spatial import cKDTree

    from tools.markers import group_labels

    require_obsm(adata, "spatial")
    xy = np.asarray(adata.obsm["spatial"], dtype=float)[:, :2]
    section_key = section_column(adata, section_key)
    sec = group_labels(adata, section_key)[0] if section_key else np.zeros(len(xy), object)
    is_s = labels == sender
    recv = (labels != None) & ~is_s  # noqa: E711
    if receiver is not None:
        recv &= labels == receiver
    zone = np.full(len(xy), None, dtype=object)
    zone[is_s] = "sender"
    zone[recv] = "far"
    for s in set(sec[is_s]):
        rs = np.where(recv & (sec == s))[0]
        if rs.size:
            bound = radius * (1 + 1e-9)  # cKDTree's bound is strict; near means d <= radius
            d, _ = cKDTree(xy[is_s & (sec == s)]).query(xy[rs], k=1, distance_upper_bound=bound)
            zone[rs[d <= radius]] = "near"
    return zone


def _pair_values(means, idx_lists):
    """min over subunit columns for each pair -> (..., n_pairs)."""
    return np.stack([means[..., ix].min(axis=-1) for ix in idx_lists], axis=-1)


@register("ligand_receptor", LRParams, LRResult,
          intents=("ligand receptor", "ligand-receptor", "cell-cell communication",
                   "cell cell communication", "signalling between", "signaling between",
                   "interactions near"))
def ligand_receptor(adata, p: LRParams) -> LRResult:
    """Ligand-receptor pairs scored near vs far from a cell type (permutation test).

    Writes adata.obs['lr_zone'] and adata.uns['ligand_receptor'][name].
    """
    import pandas as pd
    import scipy.sparse as sp
    from scipy.stats import false_discovery_control

    from tools.genesets import gene_mapper, guess_species
    from tools.markers import check_group, group_labels, log_expression

    labels, types = group_labels(adata, p.label_key)
    sender = check_group(p.sender, types, f"cell type of '{p.label_key}'")
    receiver = check_group(p.receiver, types, f"cell type of '{p.label_key}'") \
        if p.receiver else None
    X, genes, _ = log_expression(adata, p.layer)
    species = guess_species(genes)
    resource = p.resource if p.resource != "auto" else (
        None if p.lr_table else "mouseconsensus" if species == "mouse" else "consensus")
    pairs = read_lr_pairs(p.lr_table, resource)
    lr_species = guess_species(pd.concat([pairs["ligand"], pairs["receptor"]]).str.split("_")
                               .explode())
    fn, mapping = gene_mapper(lr_species, genes, p.orthologs)
    gidx = {g: i for i, g in enumerate(genes)}

    def to_idx(s):
        ix = [fn(u) for u in _subunits(s)]
        return None if not ix or any(not m for m in ix) else [gidx[m[0]] for m in ix]

    zone = near_far(adata, labels, sender, receiver, p.radius, p.section_key)
    n_s, near, far = (int((zone == z).sum()) for z in ("sender", "near", "far"))
    if n_s < p.min_cells:
        raise ParameterError(f"too few '{sender}' cells ({n_s} < {p.min_cells})")
    if near < p.min_cells or far < p.min_cells:
        raise ParameterError(f"empty neighbourhood: {near} receiver cells within {p.radius} µm "
                             f"of '{sender}' and {far} beyond (need {p.min_cells} each)")
    fixed_col, vary_col = (("ligand", "receptor") if p.direction == "sender_to_neighbours"
                           else ("receptor", "ligand"))
    rows = [(r.ligand, r.receptor, to_idx(getattr(r, fixed_col)), to_idx(getattr(r, vary_col)))
            for r in pairs.itertuples()]
    rows = [r for r in rows if r[2] is not None and r[3] is not None]
    n_panel = len(rows)
    X = sp.csr_matrix(X) if sp.issparse(X) else np.asarray(X)
    Xs = X[np.where(zone == "sender")[0]]
    Xs = Xs.toarray() if sp.issparse(Xs) else Xs
    s_mean, s_frac = Xs.mean(0), (Xs > 0).mean(0)
    rows = [r for r in rows if s_frac[r[2]].min() >= p.min_expr_frac and s_mean[r[2]].min() > 0]
    if not rows:
        raise ParameterError(f"no ligand-receptor pair with both partners in the data and the "
                             f"{fixed_col} expressed in >= {p.min_expr_frac:.0%} of '{sender}' "
                             f"cells ({n_panel} pairs in the panel)")
    vgenes = sorted({i for r in rows for i in r[3]})
    vpos = {g: j for j, g in enumerate(vgenes)}
    ridx = np.where((zone == "near") | (zone == "far"))[0]
    Xr = X[ridx][:, vgenes]
    Xr = np.asarray(Xr.toarray() if sp.issparse(Xr) else Xr, dtype=np.float64)
    is_near = zone[ridx] == "near"
    total = Xr.sum(0)

    def means(sum_near):
        return sum_near / near, (total - sum_near) / far

    vlists = [[vpos[i] for i in r[3]] for r in rows]
    fixed = np.array([s_mean[r[2]].min() for r in rows])
    m_near, m_far = means(Xr[is_near].sum(0))
    v_near, v_far = _pair_values(m_near, vlists), _pair_values(m_far, vlists)
    obs = fixed * (v_near - v_far)
    rng = np.random.default_rng(p.seed)
    ge = np.zeros(len(rows))
    le = np.zeros(len(rows))
    for start in range(0, p.n_perms, 100):
        b = min(100, p.n_perms - start)
        sel = np.argsort(rng.random((b, len(ridx))), axis=1)[:, :near]
        B = np.zeros((b, len(ridx)))
        np.put_along_axis(B, sel, 1.0, axis=1)
        pn, pf = means(B @ Xr)
        d = fixed * (_pair_values(pn, vlists) - _pair_values(pf, vlists))
        ge += (d >= obs - 1e-12).sum(0)
        le += (d <= obs + 1e-12).sum(0)
    pval = np.minimum(1.0, 2 * np.minimum(ge + 1, le + 1) / (p.n_perms + 1))
    df = pd.DataFrame({"ligand": [r[0] for r in rows], "receptor": [r[1] for r in rows],
                       "sender_mean": fixed, "near_mean": v_near, "far_mean": v_far,
                       "score_near": fixed * v_near, "score_far": fixed * v_far,
                       "pval": pval, "fdr": false_discovery_control(pval)})
    df = df.assign(_d=-(df.score_near - df.score_far).abs()).sort_values(["pval", "_d"]) \
        .drop(columns="_d").reset_index(drop=True)
    name = f"{sender}:{p.radius:g}um:{p.direction}".replace("/", "_")
    adata.obs["lr_zone"] = pd.Categorical(zone, categories=["sender", "near", "far"])
    adata.uns.setdefault("ligand_receptor", {})[name] = df
    top = [LRPair(**{k: (round(float(v), 4) if k not in ("ligand", "receptor", "pval", "fdr")
                         else v) for k, v in r.items()}) for r in
           df.head(p.n_top).to_dict("records")]
    return LRResult(key=f"ligand_receptor/{name}",
                    resource=p.lr_table or f"liana:{resource}", mapping=mapping, n_sender=n_s,
                    n_near=near, n_far=far, n_pairs_resource=len(pairs),
                    n_pairs_in_panel=n_panel, n_pairs_tested=len(df),
                    n_fdr_below_0_05=int((df["fdr"] < 0.05).sum()), top_pairs=top)
