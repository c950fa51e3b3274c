"""Describe a dataset: shape, coordinate extent, annotations with category counts, example
genes, layers, and which analyses (keys of CONTRIBUTING's table) are already present."""
from __future__ import annotations

from pydantic import BaseModel, Field

from tools.registry import register

ANALYSES = {  # (slot, key) -> what it means
    ("layers", "counts"): "raw counts kept",
    ("obsm", "X_pca"): "PCA",
    ("obsp", "spatial_connectivities"): "spatial graph",
    ("obsp", "stllm_adjacency"): "refined ST-LLM adjacency",
    ("obs", "prompt"): "serialised prompts",
    ("obsm", "X_text"): "prompt embeddings",
    ("obs", "domain"): "spatial domains",
}


class DescribeParams(BaseModel):
    dataset: str = Field("data", description="id of a loaded dataset")
    max_categories: int = Field(100, ge=1, le=1000, description="categories listed per annotation")
    n_genes: int = Field(10, ge=1, le=100, description="example genes listed")


class DescribeResult(BaseModel):
    n_obs: int
    n_vars: int
    organism: str | None = None  # from uns metadata ('dataset_info', 'organism', 'species')
    technology: str | None = None
    tissue: str | None = None
    coordinates: str | None = None  # obsm key
    extent: dict[str, list[float]] | None = None  # axis -> [min, max]
    annotations: dict[str, dict[str, int]] = {}  # categorical obs column -> category counts
    numeric_obs: list[str] = []
    genes: list[str] = []
    layers: list[str] = []
    obsm: list[str] = []
    analyses: list[str] = []


COMMON_NAMES = {"homo sapiens": "human", "mus musculus": "mouse", "rattus norvegicus": "rat",
                "danio rerio": "zebrafish", "drosophila melanogaster": "fruit fly",
                "macaca mulatta": "rhesus macaque", "gallus gallus": "chicken"}


def _metadata(adata) -> dict:
    """organism / technology / tissue from uns (top level or a metadata dict such as
    uns['dataset_info']); the organism gets its common name ('Homo sapiens (human)')."""
    out = {}
    sources = [adata.uns] + [v for k, v in adata.uns.items() if isinstance(v, dict) and
                             any(w in k.lower() for w in ("info", "meta", "dataset", "description"))]
    keys = {"organism": ("organism", "species"), "technology": ("technology", "platform", "assay"),
            "tissue": ("tissue",)}
    for field, names in keys.items():
        for src in sources:
            v = next((src[n] for n in names if isinstance(src.get(n), str) and src.get(n)), None)
            if v:
                out[field] = v
                break
    org = out.get("organism")
    if org and org.lower() in COMMON_NAMES:
        out["organism"] = f"{org} ({COMMON_NAMES[org.lower()]})"
    return out


@register("describe_dataset", DescribeParams, DescribeResult,
          intents=("describe", "overview", "summary of the data", "what is in", "how many cells",
                   "how many spots", "annotations", "what data", "how many genes", "genes were measured",
                   "annotated", "has the most", "which species", "organism", "technology",
                   "platform", "what tissue"))
def describe_dataset(adata, p: DescribeParams) -> DescribeResult:
    """Describe a dataset: size, organism / technology (if recorded), coordinates, annotations with
    counts, genes, layers, analyses present."""
    import numpy as np
    import pandas as pd

    extent = coords = None
    if "spatial" in adata.obsm:
        coords = "spatial"
        xy = np.asarray(adata.obsm["spatial"], dtype=float)
        extent = {ax: [float(np.nanmin(xy[:, i])), float(np.nanmax(xy[:, i]))]
                  for i, ax in zip(range(min(xy.shape[1], 3)), "xyz")}
    ann, numeric = {}, []
    for col in adata.obs.columns:
        s = adata.obs[col]
        if isinstance(s.dtype, pd.CategoricalDtype) or s.dtype == object or s.dtype == bool:
            counts = s.astype(str).where(s.notna(), "NA").value_counts()
            if len(counts) <= 1000:
                ann[col] = {str(k): int(v) for k, v in counts.head(p.max_categories).items()}
        elif pd.api.types.is_numeric_dtype(s):
            numeric.append(col)
    if "highly_variable" in adata.var and adata.var["highly_variable"].any():
        genes = list(adata.var_names[adata.var["highly_variable"].to_numpy()][: p.n_genes])
    else:
        genes = list(adata.var_names[: p.n_genes])
    slots = {"layers": adata.layers, "obsm": adata.obsm, "obsp": adata.obsp, "obs": adata.obs}
    present = [what for (slot, key), what in ANALYSES.items() if key in slots[slot]]
    return DescribeResult(n_obs=adata.n_obs, n_vars=adata.n_vars, **_metadata(adata),
                          coordinates=coords, extent=extent,
                          annotations=ann, numeric_obs=numeric, genes=[str(g) for g in genes],
                          layers=list(adata.layers), obsm=list(adata.obsm), analyses=present)
