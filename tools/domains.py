"""Spatial domains: cluster a representation of spots, optionally smoothed over the spatial
graph and refined with a Potts (HMRF) prior; score against annotations.

Writes ``obs['domain']`` (categorical) and ``uns['domain']`` (parameters, sizes, scores).
"""
from __future__ import annotations

import time
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from tools.errors import ParameterError, UnknownKeyError, require_obs, require_obsm
from tools.graph import smooth_array
from tools.registry import register


class DomainParams(BaseModel):
    dataset: str = Field("data", description="id of a loaded dataset")
    n_domains: int = Field(7, ge=2, le=50, description="number of spatial domains to find")
    method: Literal["gmm", "kmeans", "leiden"] = Field(
        "gmm", description="clustering: Gaussian mixture, k-means, or Leiden (resolution searched)")
    embedding: str = Field("X_pca", description="obsm key to cluster (e.g. X_pca, X_text, X_stllm)")
    n_components: int | None = Field(None, ge=2, le=1000,
                                     description="use only the leading columns (None = all)")
    smooth_rounds: int = Field(2, ge=0, le=10,
                               description="rounds of z <- (z + mean of graph neighbours' z) / 2")
    adjacency: str = Field("spatial_connectivities", description="obsp key of the spatial graph")
    covariance: Literal["tied", "full", "diag"] = Field(
        "tied", description="GMM covariance (tied ~ mclust EEE)")
    refine: Literal["none", "hmrf", "majority"] = Field(
        "hmrf", description="spatial refinement of labels: Potts-prior EM, neighbour vote, none")
    beta: float = Field(2.0, ge=0.0, le=10.0, description="Potts prior strength for refine='hmrf'")
    label_key: str | None = Field(None, description="obs column to score against, if any")
    seed: int = Field(0, ge=0, description="random seed")
    key_added: str = Field("domain", description="obs column to write")


class DomainResult(BaseModel):
    key: str
    n_domains: int
    sizes: dict[str, int]
    ari: float | None = None
    ami: float | None = None
    nmi: float | None = None
    n_scored: int | None = None
    seconds: float


def _neighbour_matrix(adata, key: str):
    import scipy.sparse as sp

    if key not in adata.obsp:
        raise UnknownKeyError(
            f"obsp key '{key}' not found: build the spatial graph first (tool build_graph)")
    A = sp.csr_matrix(adata.obsp[key], dtype=np.float64)
    A = A.maximum(A.T)
    A.setdiag(0)
    A.eliminate_zeros()
    return A


def hmrf_refine(F: np.ndarray, gmm, A, beta: float, iters: int = 10) -> np.ndarray:
    """EM for a tied-covariance Gaussian mixture with a mean-field Potts prior over the graph
    (BayesSpace-like): log q_ik = log N(f_i | mu_k, S) + log pi_k + beta * sum_j w_ij q_jk."""
    from scipy.special import logsumexp

    n, d = F.shape
    K = gmm.n_components
    mu = gmm.means_.copy()
    pi = gmm.weights_.copy()
    S = _tied_cov(gmm, d)
    q = gmm.predict_proba(F)
    W = A.multiply(1.0 / A.max()) if A.nnz else A
    for _ in range(iters):
        Si = np.linalg.inv(S)
        _, logdet = np.linalg.slogdet(S)
        D = F[:, None, :] - mu[None]
        ll = -0.5 * np.einsum("nkd,de,nke->nk", D, Si, D) - 0.5 * logdet
        lp = ll + np.log(np.maximum(pi, 1e-12)) + beta * (W @ q)
        q = np.exp(lp - logsumexp(lp, axis=1, keepdims=True))
        w = q.sum(0) + 1e-12
        mu = (q.T @ F) / w[:, None]
        pi = w / n
        S = sum(((F - mu[k]).T * q[:, k]) @ (F - mu[k]) for k in range(K)) / n
        S += 1e-6 * np.eye(d)
    return q.argmax(1)


def _tied_cov(gmm, d: int) -> np.ndarray:
    c = gmm.covariances_
    if gmm.covariance_type == "tied":
        return c.copy()
    if gmm.covariance_type == "full":
        return np.einsum("k,kde->de", gmm.weights_, c)
    if gmm.covariance_type == "diag":
        return np.diag(gmm.weights_ @ c)
    return np.eye(d) * float(np.mean(c))


def majority_refine(labels: np.ndarray, A) -> np.ndarray:
    """Relabel a spot when more than half of its graph neighbours share another label."""
    out = labels.copy()
    A = A.tocsr()
    for i in range(A.shape[0]):
        nb = labels[A.indices[A.indptr[i]:A.indptr[i + 1]]]
        if nb.size == 0:
            continue
        vals, counts = np.unique(nb, return_counts=True)
        j = counts.argmax()
        if counts[j] > nb.size / 2 and vals[j] != labels[i]:
            out[i] = vals[j]
    return out


def _leiden_n(adata_like, F: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Leiden on a kNN graph of F, bisecting the resolution to reach n clusters."""
    import anndata as ad
    import scanpy as sc

    tmp = ad.AnnData(np.zeros((F.shape[0], 1), dtype=np.float32))
    tmp.obsm["F"] = F
    sc.pp.neighbors(tmp, use_rep="F", n_neighbors=15, random_state=seed)
    lo, hi, best = 0.01, 3.0, None
    for _ in range(25):
        res = (lo + hi) / 2
        sc.tl.leiden(tmp, resolution=res, random_state=seed, key_added="l",
                     flavor="igraph", n_iterations=2, directed=False)
        k = tmp.obs["l"].nunique()
        labels = tmp.obs["l"].astype(int).to_numpy()
        if best is None or abs(k - n) < abs(best[0] - n):
            best = (k, labels)
        if k == n:
            break
        lo, hi = (res, hi) if k < n else (lo, res)
    return best[1]


def cluster(F: np.ndarray, n: int, method: str, seed: int, covariance: str = "tied"):
    """Cluster rows of F into n groups; returns (labels, fitted GMM or None)."""
    if method == "gmm":
        from sklearn.mixture import GaussianMixture

        g = GaussianMixture(n, covariance_type=covariance, random_state=seed, reg_covar=1e-5)
        g.fit(F)
        return g.predict(F), g
    if method == "kmeans":
        from sklearn.cluster import KMeans

        return KMeans(n, n_init=10, random_state=seed).fit_predict(F), None
    return _leiden_n(None, F, n, seed), None


def score_labels(truth, pred) -> dict:
    """ARI / AMI / NMI on spots with a label (NaN / empty excluded)."""
    import pandas as pd
    from sklearn import metrics

    truth = pd.Series(np.asarray(truth, dtype=object))
    ok = truth.notna() & (truth.astype(str) != "") & (truth.astype(str).str.lower() != "nan")
    t = truth[ok].astype(str).to_numpy()
    p = np.asarray(pred)[ok.to_numpy()]
    return {
        "ari": float(metrics.adjusted_rand_score(t, p)),
        "ami": float(metrics.adjusted_mutual_info_score(t, p)),
        "nmi": float(metrics.normalized_mutual_info_score(t, p)),
        "n_scored": int(ok.sum()),
    }


@register("find_domains", DomainParams, DomainResult,
          intents=("spatial domains", "find domains", "find the layers", "cortical layers",
                   "cluster the spots", "segment the tissue", "regions of the tissue"))
def find_domains(adata, p: DomainParams) -> DomainResult:
    """Cluster spots into spatial domains; writes obs[key_added] and uns[key_added]."""
    import pandas as pd

    t0 = time.perf_counter()
    require_obsm(adata, p.embedding)
    if p.n_domains > adata.n_obs:
        raise ParameterError(f"n_domains={p.n_domains} is more than the {adata.n_obs} spots")
    if p.label_key is not None:
        require_obs(adata, p.label_key)
    F = np.asarray(adata.obsm[p.embedding], dtype=np.float64)[:, : p.n_components]
    if not np.isfinite(F).all():
        raise ParameterError(f"obsm['{p.embedding}'] contains NaN or infinite values")
    need_graph = p.smooth_rounds > 0 or p.refine != "none"
    A = _neighbour_matrix(adata, p.adjacency) if need_graph else None
    F = smooth_array(F, A, p.smooth_rounds) if p.smooth_rounds else F
    labels, gmm = cluster(F, p.n_domains, p.method, p.seed, p.covariance)
    if p.refine == "hmrf":
        if gmm is None:
            raise ParameterError("refine='hmrf' needs method='gmm'; use refine='majority'")
        labels = hmrf_refine(F, gmm, A, p.beta)
    elif p.refine == "majority":
        labels = majority_refine(labels, A)
    # name domains by size so labels are stable across runs
    order = {lab: i for i, lab in enumerate(pd.Series(labels).value_counts().index)}
    names = np.array([str(order[x]) for x in labels])
    cats = [str(i) for i in range(len(order))]
    adata.obs[p.key_added] = pd.Categorical(names, categories=cats)
    sizes = {c: int((names == c).sum()) for c in cats}
    scores = score_labels(adata.obs[p.label_key], names) if p.label_key else {}
    seconds = time.perf_counter() - t0
    adata.uns[p.key_added] = {"params": p.model_dump(exclude_none=True), "sizes": sizes,
                              **scores, "seconds": seconds}
    return DomainResult(key=p.key_added, n_domains=len(cats), sizes=sizes, seconds=seconds,
                        **scores)
