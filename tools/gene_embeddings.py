"""Gene and cell embeddings from gene descriptions (GenePT / scELMo, scReader) and their uses.

Gene embeddings come from the knowledge store (:mod:`tools.knowledge`); cell embeddings are the
expression-weighted (wa) or arithmetic (aa) average of the embeddings of a cell's genes, or the
embedding of a rank-ordered gene sentence (scReader-style). Then: kNN zero-shot annotation,
clustering scores, and in-silico gene deletion.

Keys: ``varm['X_genept']``, ``var['genept_source']``, ``uns['genept']``;
``obsm['X_genept_wa']``, ``obsm['X_genept_aa']``; ``obs['gene_sentence']``, ``obsm['X_screader']``;
``obs['knn_label']``; ``obs['emb_cluster']``; ``uns['insilico_deletion']``.
"""
from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from tools.errors import DataError, ParameterError, UnknownKeyError, require_obs, require_obsm, suggest
from tools.registry import register


class StoreParams(BaseModel):
    dataset: str = Field("data", description="id of a loaded dataset")
    species: Literal["auto", "human", "mouse"] = Field(
        "auto", description="species of the gene symbols (auto: from dataset_info or symbol case)")
    store: str | None = Field(None, description="knowledge store folder (default $TISSUETALK_HOME/kb)")
    embedder: str = Field("minilm", description="embedder spec the store was built with")


def guess_species(adata) -> str:
    org = str((adata.uns.get("dataset_info") or {}).get("organism", "")).lower()
    if "mus musculus" in org or "mouse" in org:
        return "mouse"
    if "homo sapiens" in org or "human" in org:
        return "human"
    names = [n for n in map(str, adata.var_names[:2000]) if any(c.isalpha() for c in n)]
    upper = sum(n == n.upper() for n in names)
    return "human" if names and upper / len(names) > 0.5 else "mouse"


def _species(adata, p: StoreParams) -> str:
    return guess_species(adata) if p.species == "auto" else p.species


# ---- gene embeddings -----------------------------------------------------------------------

class GeneEmbeddingParams(StoreParams):
    require_summary: bool = Field(
        False, description="use only genes with a summary text (not just a name), as GenePT does")


class GeneEmbeddingResult(BaseModel):
    key: str
    species: str
    n_genes: int
    n_with_text: int = Field(description="genes found in the store")
    coverage: float
    n_refseq: int
    n_ortholog: int
    n_llm: int
    n_name_only: int
    n_missing: int
    missing: list[str] = Field(description="first 30 genes without a match")


@register("gene_embeddings", GeneEmbeddingParams, GeneEmbeddingResult,
          intents=("gene embeddings", "embed genes", "genept", "gene description embeddings"))
def gene_embeddings(adata, p: GeneEmbeddingParams) -> GeneEmbeddingResult:
    """Embed the dataset's genes by their NCBI descriptions. Writes varm['X_genept'], var['genept_source']."""
    from tools.knowledge import get_genes

    species = _species(adata, p)
    genes = [str(g) for g in adata.var_names]
    look = get_genes(genes, species, p.store, p.embedder)
    dim = next(iter(look.found.values()))["embedding"].shape[0] if look.found else 0
    if not look.found:
        raise DataError(f"none of the {len(genes)} genes is in the {species} knowledge store "
                        f"(first genes: {', '.join(genes[:5])}); wrong species or store?")
    emb = np.zeros((len(genes), dim), np.float32)
    source = np.array(["none"] * len(genes), dtype=object)
    for i, g in enumerate(genes):
        r = look.found.get(g)
        if r is None or (p.require_summary and not r["meta"].get("summary")):
            continue
        emb[i], source[i] = r["embedding"], r["meta"]["source"]
    adata.varm["X_genept"] = emb
    adata.var["genept_source"] = source.astype(str)
    counts = {s: int((source == s).sum()) for s in ("refseq", "human_ortholog", "llm", "ncbi_name_only")}
    n_text = int((source != "none").sum())
    missing = [g for g in genes if g not in look.found]
    adata.uns["genept"] = {"embedder": p.embedder, "species": species, "dim": dim, "store": p.store or "",
                           "n_with_text": n_text, "missing": missing,
                           "require_summary": p.require_summary}
    return GeneEmbeddingResult(
        key="X_genept", species=species, n_genes=len(genes), n_with_text=n_text,
        coverage=round(n_text / len(genes), 4), n_refseq=counts["refseq"],
        n_ortholog=counts["human_ortholog"], n_llm=counts["llm"], n_name_only=counts["ncbi_name_only"],
        n_missing=len(missing), missing=missing[:30])


# ---- cell embeddings -----------------------------------------------------------------------

def _expression(adata, layer: str | None):
    import scipy.sparse as sp

    if layer is not None and layer not in adata.layers:
        raise UnknownKeyError(f"layer '{layer}' not found{suggest(layer, adata.layers.keys())}")
    x = adata.X if layer is None else adata.layers[layer]
    x = sp.csr_matrix(x, dtype=np.float32) if sp.issparse(x) else np.asarray(x, np.float32)
    vals = x.data if sp.issparse(x) else x
    if vals.size and (np.isnan(vals).any() or vals.min() < 0):
        raise DataError("expression has negative or NaN values (scaled data?): cell embeddings "
                        "need non-negative, e.g. log-normalised, values; pass layer=")
    return x


def _l2(m: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(m, axis=1, keepdims=True)
    return (m / np.where(n > 0, n, 1)).astype(np.float32)


def average_embeddings(x, emb: np.ndarray, weighted: bool) -> tuple[np.ndarray, int]:
    """wa (weighted) or aa rows, L2-normalised; also the number of cells with no covered gene."""
    if not weighted:
        x = (x > 0).astype(np.float32)
    num = np.asarray(x @ emb)
    den = np.asarray(x.sum(axis=1)).ravel()
    out = num / np.where(den > 0, den, 1)[:, None]
    return _l2(out), int((den == 0).sum())


class CellEmbeddingParams(GeneEmbeddingParams):
    method: Literal["wa", "aa", "both"] = Field(
        "both", description="wa: expression-weighted average of gene embeddings; aa: plain average")
    layer: str | None = Field(None, description="expression layer (default .X, log-normalised)")


class CellEmbeddingResult(BaseModel):
    keys: list[str]
    n_cells: int
    n_genes_used: int
    n_empty_cells: int = Field(description="cells expressing none of the genes with text (zero rows)")


def _ensure_gene_embeddings(adata, p) -> np.ndarray:
    gp = GeneEmbeddingParams(**{k: getattr(p, k) for k in GeneEmbeddingParams.model_fields if hasattr(p, k)})
    want = {"embedder": gp.embedder, "store": gp.store or "", "species": _species(adata, gp),
            "require_summary": gp.require_summary}
    info = adata.uns.get("genept", {})
    if "X_genept" not in adata.varm or any(info.get(k) != v for k, v in want.items()):
        gene_embeddings(adata, gp)
    return np.asarray(adata.varm["X_genept"], np.float32)


@register("cell_embeddings", CellEmbeddingParams, CellEmbeddingResult,
          intents=("cell embeddings", "genept", "scelmo", "embed cells by gene descriptions"))
def cell_embeddings(adata, p: CellEmbeddingParams) -> CellEmbeddingResult:
    """GenePT-w / scELMo cell embeddings. Writes obsm['X_genept_wa'] and/or obsm['X_genept_aa']."""
    emb = _ensure_gene_embeddings(adata, p)
    use = np.abs(emb).sum(1) > 0
    x = _expression(adata, p.layer)[:, use]
    keys, empty = [], 0
    for m in (("wa", "aa") if p.method == "both" else (p.method,)):
        adata.obsm[f"X_genept_{m}"], empty = average_embeddings(x, emb[use], weighted=m == "wa")
        adata.uns[f"X_genept_{m}"] = {"embedder": p.embedder, "layer": p.layer, "n_genes": int(use.sum())}
        keys.append(f"X_genept_{m}")
    return CellEmbeddingResult(keys=keys, n_cells=adata.n_obs, n_genes_used=int(use.sum()),
                               n_empty_cells=empty)


# ---- scReader-style rank-ordered gene sentences --------------------------------------------

class RankSentenceParams(StoreParams):
    n_genes: int = Field(20, ge=1, le=200, description="top genes (by expression) in each sentence")
    text: Literal["symbols", "names"] = Field(
        "symbols", description="write genes as symbols or as official full names from the store")
    layer: str | None = Field(None, description="expression layer (default .X)")
    key_added: str = Field("X_screader", pattern=r"^[A-Za-z0-9_.-]+$", description="obsm key")


class RankSentenceResult(BaseModel):
    key: str
    n_cells: int
    n_unique_sentences: int
    n_names_missing: int = Field(description="genes written as symbols because the store had no name")
    example: str


def rank_sentences(x, genes: list[str], n: int) -> list[str]:
    """'Genes ranked by expression: A, B, C.' per cell (expressed genes only, highest first)."""
    import scipy.sparse as sp

    genes = np.asarray(genes, dtype=object)
    out = []
    for i in range(x.shape[0]):
        row = x[i].toarray().ravel() if sp.issparse(x) else np.asarray(x[i]).ravel()
        order = np.argsort(-row, kind="stable")[:n]
        order = order[row[order] > 0]
        out.append("Genes ranked by expression: " + ", ".join(genes[order]) + "."
                   if len(order) else "No genes expressed.")
    return out


@register("rank_sentence_embeddings", RankSentenceParams, RankSentenceResult,
          intents=("screader", "rank-ordered genes", "gene sentence", "cell sentence embedding"))
def rank_sentence_embeddings(adata, p: RankSentenceParams, *, progress: bool = False) -> RankSentenceResult:
    """Embed each cell's top genes as a ranked sentence. Writes obs['gene_sentence'], obsm[key_added]."""
    from tools.knowledge import get_genes, resolve_embedder

    x = _expression(adata, p.layer)
    genes = [str(g) for g in adata.var_names]
    n_missing = 0
    if p.text == "names":
        look = get_genes(genes, _species(adata, p), p.store, p.embedder, embeddings=False)
        names = {g: r["meta"].get("full_name") for g, r in look.found.items()}
        n_missing = sum(not names.get(g) for g in genes)
        genes = [names.get(g) or g for g in genes]
    sentences = rank_sentences(x, genes, p.n_genes)
    emb = resolve_embedder(p.embedder)
    adata.obs["gene_sentence"] = sentences
    adata.obsm[p.key_added] = emb.embed(sentences, progress=progress)
    adata.uns[p.key_added] = {"embedder": emb.name, "n_genes": p.n_genes, "text": p.text}
    return RankSentenceResult(key=p.key_added, n_cells=adata.n_obs, n_unique_sentences=len(set(sentences)),
                              n_names_missing=n_missing, example=sentences[0][:300])


# ---- kNN annotation and clustering scores --------------------------------------------------

class EvalParams(BaseModel):
    dataset: str = Field("data", description="id of a loaded dataset")
    embedding: str = Field("X_genept_wa", description="obsm key of the cell embedding")
    label_key: str = Field(description="obs column with cell-type (or region) labels")
    mask_key: str | None = Field(None, description="boolean obs column: use only these cells")
    seed: int = Field(0, ge=0, description="random seed")


def _cells(adata, p: EvalParams):
    """(embedding, labels as str, index of used cells); cells without a label are left out."""
    require_obsm(adata, p.embedding)
    require_obs(adata, p.label_key)
    ok = adata.obs[p.label_key].notna().to_numpy()
    if p.mask_key is not None:
        require_obs(adata, p.mask_key)
        ok &= adata.obs[p.mask_key].fillna(False).astype(bool).to_numpy()
    idx = np.flatnonzero(ok)
    if len(idx) < 4:
        raise DataError(f"only {len(idx)} cells have a label in obs['{p.label_key}']")
    x = np.asarray(adata.obsm[p.embedding], np.float32)[idx]
    return x, adata.obs[p.label_key].astype(str).to_numpy()[idx], idx


class KnnParams(EvalParams):
    split_key: str | None = Field(None, description="obs column that separates reference and query "
                                  "cells (e.g. a section); None: a stratified random split")
    reference: str | None = Field(None, description="value of split_key marking reference cells")
    test_size: float = Field(0.5, gt=0, lt=1, description="query fraction for a random split")
    k: int = Field(10, ge=1, le=100, description="neighbours voting for a query cell's label")
    metric: Literal["cosine", "euclidean"] = Field("cosine", description="distance between embeddings")
    key_added: str = Field("knn_label", pattern=r"^[A-Za-z0-9_.-]+$", description="obs column to write")


class KnnResult(BaseModel):
    key: str
    n_reference: int
    n_query: int
    accuracy: float
    precision: float = Field(description="macro-averaged")
    recall: float = Field(description="macro-averaged")
    f1: float = Field(description="macro-averaged")
    unseen_labels: list[str] = Field(description="query labels absent from the reference")


@register("knn_annotate", KnnParams, KnnResult,
          intents=("annotate cell types zero-shot", "zero-shot annotation", "knn annotation",
                   "transfer labels", "label transfer"))
def knn_annotate(adata, p: KnnParams) -> KnnResult:
    """kNN label transfer from reference to query cells on an embedding. Writes obs[key_added]."""
    import pandas as pd
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support
    from sklearn.model_selection import train_test_split
    from sklearn.neighbors import KNeighborsClassifier

    x, y, idx = _cells(adata, p)
    if p.split_key is not None:
        require_obs(adata, p.split_key)
        split = adata.obs[p.split_key].astype(str).to_numpy()[idx]
        if p.reference is None or p.reference not in set(split):
            raise ParameterError(f"reference must be one of obs['{p.split_key}'] values: "
                                 f"{', '.join(sorted(set(split))[:10])}")
        ref = split == p.reference
        if ref.all():
            raise ParameterError(f"every cell has {p.split_key}={p.reference}: no query cells")
    else:
        counts = pd.Series(y).value_counts()
        strat = y if counts.min() >= 2 else None
        tr, _ = train_test_split(np.arange(len(y)), test_size=p.test_size, random_state=p.seed,
                                 stratify=strat)
        ref = np.zeros(len(y), bool)
        ref[tr] = True
    if ref.sum() < p.k:
        raise ParameterError(f"only {int(ref.sum())} reference cells for k={p.k}")
    clf = KNeighborsClassifier(n_neighbors=p.k, metric=p.metric).fit(x[ref], y[ref])
    pred = clf.predict(x[~ref])
    truth = y[~ref]
    prec, rec, f1, _ = precision_recall_fscore_support(truth, pred, average="macro", zero_division=0)
    col = pd.Series(pd.NA, index=adata.obs_names, dtype=object)
    col.iloc[idx[~ref]] = pred
    adata.obs[p.key_added] = col.astype("category")
    unseen = sorted(set(truth) - set(y[ref]))
    res = KnnResult(key=p.key_added, n_reference=int(ref.sum()), n_query=int((~ref).sum()),
                    accuracy=round(float(accuracy_score(truth, pred)), 4), precision=round(float(prec), 4),
                    recall=round(float(rec), 4), f1=round(float(f1), 4), unseen_labels=unseen)
    adata.uns[p.key_added] = res.model_dump() | {"embedding": p.embedding, "label_key": p.label_key}
    return res


class ClusterScoreParams(EvalParams):
    method: Literal["kmeans", "leiden"] = Field("kmeans", description="clustering of the embedding")
    n_clusters: int | None = Field(None, ge=2, le=200, description="k-means clusters (default: number of labels)")
    resolution: float = Field(1.0, gt=0, le=10, description="Leiden resolution")
    key_added: str = Field("emb_cluster", pattern=r"^[A-Za-z0-9_.-]+$", description="obs column to write")


class ClusterScoreResult(BaseModel):
    key: str
    n_clusters: int
    ari: float
    nmi: float
    asw: float = Field(description="silhouette width of the labels on the embedding (cosine, -1..1)")


@register("embedding_cluster_scores", ClusterScoreParams, ClusterScoreResult,
          intents=("clustering scores", "cluster the embedding", "ari nmi", "silhouette"))
def embedding_cluster_scores(adata, p: ClusterScoreParams) -> ClusterScoreResult:
    """Cluster an embedding and score it against labels (ARI, NMI, label ASW). Writes obs[key_added]."""
    import pandas as pd
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score, silhouette_score

    x, y, idx = _cells(adata, p)
    n_labels = len(set(y))
    if n_labels < 2:
        raise DataError(f"obs['{p.label_key}'] has a single label: nothing to score")
    if p.method == "kmeans":
        from sklearn.cluster import KMeans

        k = p.n_clusters or n_labels
        if k >= len(y):
            raise ParameterError(f"{k} clusters for {len(y)} cells")
        cl = KMeans(k, n_init=4, random_state=p.seed).fit_predict(x).astype(str)
    else:
        import anndata as ad
        import scanpy as sc

        tmp = ad.AnnData(np.zeros((len(y), 1), np.float32), obsm={"e": x})
        sc.pp.neighbors(tmp, use_rep="e", random_state=p.seed)
        sc.tl.leiden(tmp, resolution=p.resolution, random_state=p.seed, flavor="igraph",
                     n_iterations=2, directed=False)
        cl = tmp.obs["leiden"].astype(str).to_numpy()
    asw = silhouette_score(x, y, metric="cosine", sample_size=min(len(y), 4000), random_state=p.seed)
    col = pd.Series(pd.NA, index=adata.obs_names, dtype=object)
    col.iloc[idx] = cl
    adata.obs[p.key_added] = col.astype("category")
    res = ClusterScoreResult(key=p.key_added, n_clusters=len(set(cl)),
                             ari=round(float(adjusted_rand_score(y, cl)), 4),
                             nmi=round(float(normalized_mutual_info_score(y, cl)), 4),
                             asw=round(float(asw), 4))
    adata.uns[p.key_added] = res.model_dump() | {"embedding": p.embedding, "label_key": p.label_key}
    return res


# ---- in-silico deletion --------------------------------------------------------------------

class DeletionParams(StoreParams):
    condition_key: str = Field(description="obs column with the condition (e.g. disease) labels")
    condition: str = Field(description="value of condition_key for the condition (e.g. disease) cells")
    control: str = Field(description="value of condition_key for the control cells")
    genes: list[str] | None = Field(None, description="candidate genes (default: the most expressed)")
    n_candidates: int = Field(100, ge=1, le=2000, description="candidates when genes is not given")
    layer: str | None = Field(None, description="expression layer (default .X)")


class DeletionResult(BaseModel):
    key: str
    baseline_similarity: float = Field(description="cosine(mean condition wa, mean control wa)")
    n_condition: int
    n_control: int
    n_tested: int
    top_genes: list[str] = Field(description="genes whose deletion moves the condition closest to control")
    top_deltas: list[float]
    skipped: list[str] = Field(description="candidate genes without a description embedding")


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


def deletion_deltas(x_cond, x_ctrl, emb: np.ndarray, cols: list[int]) -> tuple[float, np.ndarray]:
    """Baseline similarity and its change when each gene in ``cols`` is zeroed in condition cells."""
    import scipy.sparse as sp

    ctrl_mean = average_embeddings(x_ctrl, emb, True)[0].mean(0)
    num = np.asarray(x_cond @ emb, np.float64)
    den = np.asarray(x_cond.sum(axis=1), np.float64).ravel()

    def mean_wa(n, d):
        rows = n / np.where(d > 0, d, 1)[:, None]
        return _l2(rows).mean(0)

    base = _cos(mean_wa(num, den), ctrl_mean)
    deltas = np.empty(len(cols))
    for j, c in enumerate(cols):
        xc = np.asarray(x_cond[:, c].toarray() if sp.issparse(x_cond) else x_cond[:, [c]],
                        np.float64).ravel()
        deltas[j] = _cos(mean_wa(num - xc[:, None] * emb[c], den - xc), ctrl_mean) - base
    return base, deltas


@register("in_silico_deletion", DeletionParams, DeletionResult,
          intents=("gene deletion in silico", "in silico deletion", "knock out gene",
                   "which genes drive the disease", "therapeutic targets"))
def in_silico_deletion(adata, p: DeletionParams) -> DeletionResult:
    """scELMo in-silico deletion: zero a gene in condition cells, recompute wa, rank the change
    of the condition-control cosine similarity. Writes uns['insilico_deletion']."""
    require_obs(adata, p.condition_key)
    cond = adata.obs[p.condition_key].astype(str).to_numpy()
    for v in (p.condition, p.control):
        if v not in set(cond):
            raise UnknownKeyError(f"'{v}' is not a value of obs['{p.condition_key}']"
                                  f"{suggest(v, set(cond))}")
    emb = _ensure_gene_embeddings(adata, p)
    x = _expression(adata, p.layer)
    genes = [str(g) for g in adata.var_names]
    has = np.abs(emb).sum(1) > 0
    if p.genes:
        unknown = [g for g in p.genes if g not in set(genes)]
        if unknown:
            raise UnknownKeyError(f"gene '{unknown[0]}' not in the dataset{suggest(unknown[0], genes)}")
        cand = [genes.index(g) for g in dict.fromkeys(p.genes)]
    else:
        mean = np.asarray(x[cond == p.condition].mean(axis=0)).ravel()
        cand = [int(i) for i in np.argsort(-mean, kind="stable") if has[i]][:p.n_candidates]
    skipped = [genes[i] for i in cand if not has[i]]
    cols = [i for i in cand if has[i]]
    if not cols:
        raise DataError("none of the candidate genes has a description embedding")
    base, deltas = deletion_deltas(x[cond == p.condition], x[cond == p.control], emb, cols)
    order = np.argsort(-deltas, kind="stable")
    table = {"gene": [genes[cols[i]] for i in order], "delta": [float(deltas[i]) for i in order]}
    adata.uns["insilico_deletion"] = {"baseline_similarity": base, "condition": p.condition,
                                      "control": p.control, **table}
    return DeletionResult(
        key="insilico_deletion", baseline_similarity=round(base, 6),
        n_condition=int((cond == p.condition).sum()), n_control=int((cond == p.control).sum()),
        n_tested=len(cols), top_genes=table["gene"][:10],
        top_deltas=[round(d, 6) for d in table["delta"][:10]], skipped=skipped)
