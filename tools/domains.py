"""Spatial domains: cluster a representation of spots, optionally smoothed over the spatial
graph and refined with a Potts (HMRF) prior; score against annotations. Region detection
(ST-LLM table 2): how well a classifier trained on part of the spots predicts the annotated region
of the others from their embedding.

Writes ``obs['domain']`` (categorical) and ``uns['domain']`` (parameters, sizes, scores);
``uns['region_detection']`` (split, accuracy, macro precision / recall, per-class scores).
"""
from __future__ import annotations

import time
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from tools.errors import DataError, ParameterError, UnknownKeyError, require_obs, require_obsm
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


def single_thread_blas():
    """Context: BLAS on one thread. The matrices here are small (spots x 30); on 2 shared cores
    OpenBLAS threads cost more than they gain (GMM + HMRF on 3,639 spots: 4.0 s -> 1.1 s)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


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


def _leiden_n(F: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Leiden (igraph, modularity) on scanpy's 15-NN connectivities of F, bisecting the resolution
    to reach n clusters (the closest count found when n is not reached exactly)."""
    import random

    import anndata as ad
    import igraph as ig
    import scanpy as sc

    tmp = ad.AnnData(np.zeros((F.shape[0], 1), dtype=np.float32))
    tmp.obsm["F"] = np.asarray(F, dtype=np.float32)
    sc.pp.neighbors(tmp, use_rep="F", n_neighbors=15, random_state=seed)
    G = tmp.obsp["connectivities"].tocoo()
    keep = G.row < G.col
    g = ig.Graph(n=F.shape[0], edges=list(zip(G.row[keep].tolist(), G.col[keep].tolist())),
                 edge_attrs={"weight": G.data[keep].tolist()})
    lo, hi, best = 0.01, 3.0, None
    for _ in range(25):
        res = (lo + hi) / 2
        ig.set_random_number_generator(random.Random(seed))
        part = g.community_leiden(objective_function="modularity", weights="weight",
                                  resolution=res, n_iterations=2)
        labels = np.asarray(part.membership)
        k = len(set(part.membership))
        if best is None or abs(k - n) < abs(best[0] - n):
            best = (k, labels)
        if k == n:
            break
        lo, hi = (res, hi) if k < n else (lo, res)
    ig.set_random_number_generator(random)
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
    return _leiden_n(F, n, seed), None


def labelled(truth) -> np.ndarray:
    """Boolean mask of spots that carry a label (NaN, None, '' and 'nan' count as missing)."""
    import pandas as pd

    truth = pd.Series(np.asarray(truth, dtype=object))
    s = truth.astype(str)
    return (truth.notna() & (s != "") & (s.str.lower() != "nan")).to_numpy()


def score_labels(truth, pred) -> dict:
    """ARI / AMI / NMI on spots with a label (NaN / empty excluded)."""
    from sklearn import metrics

    ok = labelled(truth)
    t = np.asarray(truth, dtype=object)[ok].astype(str)
    p = np.asarray(pred)[ok]
    return {
        "ari": float(metrics.adjusted_rand_score(t, p)),
        "ami": float(metrics.adjusted_mutual_info_score(t, p)),
        "nmi": float(metrics.normalized_mutual_info_score(t, p)),
        "n_scored": int(ok.sum()),
    }


def _map_domains(args: dict, result: dict) -> dict:
    """After find_domains: the spatial map of the domains (next to the labels they were scored on)."""
    keys = [result["key"]] + ([args["label_key"]] if args.get("label_key") else [])
    return {"name": "plot_spatial", "args": {"dataset": args.get("dataset", "data"), "keys": keys}}


@register("find_domains", DomainParams, DomainResult,
          intents=("spatial domains", "find domains", "find the layers", "cortical layers",
                   "cluster the spots", "segment the tissue", "regions of the tissue"),
          then=_map_domains)
def find_domains(adata, p: DomainParams) -> DomainResult:
    """Cluster spots into spatial domains; writes obs[key_added] and uns[key_added]."""
    import pandas as pd

    t0 = time.perf_counter()
    require_obsm(adata, p.embedding)
    if p.n_domains > adata.n_obs:
        raise ParameterError(f"n_domains={p.n_domains} is more than the {adata.n_obs} spots")
    if p.label_key is not None:
        require_obs(adata, p.label_key)
        if not labelled(adata.obs[p.label_key]).any():
            raise DataError(f"obs column '{p.label_key}' has no labelled spots (all NaN)")
    prev = adata.uns.get(p.key_added)
    if p.key_added in adata.obs and not (isinstance(prev, dict) and "params" in prev):
        raise ParameterError(f"obs['{p.key_added}'] holds existing annotations; choose another key_added")
    F = np.asarray(adata.obsm[p.embedding], dtype=np.float64)[:, : p.n_components]
    if not np.isfinite(F).all():
        raise ParameterError(f"obsm['{p.embedding}'] contains NaN or infinite values")
    if p.refine == "hmrf" and p.method != "gmm":
        raise ParameterError(f"refine='hmrf' needs method='gmm' (got '{p.method}'); "
                             "use refine='majority' or 'none'")
    need_graph = p.smooth_rounds > 0 or p.refine != "none"
    A = _neighbour_matrix(adata, p.adjacency) if need_graph else None
    with single_thread_blas():
        F = smooth_array(F, A, p.smooth_rounds) if p.smooth_rounds else F
        labels, gmm = cluster(F, p.n_domains, p.method, p.seed, p.covariance)
        if p.refine == "hmrf":
            labels = hmrf_refine(F, gmm, A, p.beta)
        elif p.refine == "majority":
            labels = majority_refine(labels, A)
    # name domains by size so labels are stable across runs
    order = {lab: i for i, lab in enumerate(pd.Series(labels).value_counts().index)}
    names = np.array([str(order[x]) for x in labels])
    cats = [str(i) for i in range(len(order))]
    sizes = {c: int((names == c).sum()) for c in cats}
    scores = score_labels(adata.obs[p.label_key], names) if p.label_key else {}
    adata.obs[p.key_added] = pd.Categorical(names, categories=cats)
    seconds = time.perf_counter() - t0
    adata.uns[p.key_added] = {"params": p.model_dump(exclude_none=True), "sizes": sizes,
                              **scores, "seconds": seconds}
    return DomainResult(key=p.key_added, n_domains=len(cats), sizes=sizes, seconds=seconds,
                        **scores)


# ---------------------------------------------------------------- region detection
class RegionParams(BaseModel):
    dataset: str = Field("data", description="id of a loaded dataset")
    embedding: str = Field("X_pca", description="obsm key of the spot features "
                           "(e.g. X_pca, X_text, X_stllm)")
    label_key: str = Field("ground_truth", description="obs column of region labels to predict; "
                           "spots without a label (NaN) are left out")
    classifier: Literal["logistic", "knn"] = Field(
        "logistic", description="multinomial logistic regression, or k-nearest neighbours (k=15)")
    test_size: float = Field(0.3, gt=0.0, lt=1.0,
                             description="fraction of labelled spots held out for testing")
    n_components: int | None = Field(None, ge=1, le=1000,
                                     description="use only the leading columns (None = all)")
    smooth_rounds: int = Field(0, ge=0, le=10, description="rounds of neighbour smoothing of the "
                               "features before training (0 = the embedding as it is)")
    adjacency: str = Field("spatial_connectivities",
                           description="obsp key of the spatial graph (for smooth_rounds > 0)")
    C: float = Field(1.0, gt=0.0, le=1e4, description="inverse regularisation strength "
                     "(logistic regression)")
    seed: int = Field(0, ge=0, description="seed of the stratified split and the classifier")
    key_added: str = Field("region_detection", pattern=r"^[A-Za-z0-9_.-]{1,64}$",
                           description="uns key to write")


class ClassScores(BaseModel):
    precision: float
    recall: float
    f1: float
    support: int = Field(description="test spots of this class")


class RegionResult(BaseModel):
    key: str
    classifier: str
    n_train: int
    n_test: int
    n_classes: int
    n_unlabelled: int = Field(description="spots left out because their label is missing")
    accuracy: float
    precision: float = Field(description="macro-averaged over classes")
    recall: float = Field(description="macro-averaged over classes")
    f1: float = Field(description="macro-averaged over classes")
    per_class: dict[str, ClassScores]
    seconds: float


@register("detect_regions", RegionParams, RegionResult,
          intents=("region detection", "detect regions", "predict the regions",
                   "predict the layers", "train a classifier", "classifier accuracy"))
def detect_regions(adata, p: RegionParams) -> RegionResult:
    """Region detection (ST-LLM table 2): train a classifier on a stratified split of labelled
    spots' embedding; report test accuracy and macro precision / recall. Writes uns[key_added]."""
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    t0 = time.perf_counter()
    require_obsm(adata, p.embedding)
    require_obs(adata, p.label_key)
    F = np.asarray(adata.obsm[p.embedding], dtype=np.float64)
    if F.ndim != 2 or F.shape[0] != adata.n_obs:
        raise DataError(f"obsm['{p.embedding}'] must be an (n_spots, n_features) array")
    F = F[:, : p.n_components]
    if not np.isfinite(F).all():
        raise ParameterError(f"obsm['{p.embedding}'] contains NaN or infinite values")
    if p.smooth_rounds:
        F = smooth_array(F, _neighbour_matrix(adata, p.adjacency), p.smooth_rounds)
    ok = labelled(adata.obs[p.label_key])
    y = np.asarray(adata.obs[p.label_key], dtype=object)[ok].astype(str)
    X = F[ok]
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2:
        raise DataError(f"obs column '{p.label_key}' needs at least 2 labelled classes, "
                        f"it has {len(classes)} ({int(ok.sum())} labelled spots)")
    rare = classes[counts < 2]
    if len(rare):
        raise DataError(f"class(es) {', '.join(map(str, rare[:5]))} of '{p.label_key}' have a "
                        "single labelled spot: a stratified split needs at least 2 per class")
    n_test = int(np.ceil(p.test_size * len(y)))
    if n_test < len(classes) or len(y) - n_test < len(classes):
        raise ParameterError(f"test_size={p.test_size} of {len(y)} labelled spots leaves fewer "
                             f"than one spot per class ({len(classes)}) in the train or test split")
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=p.test_size, stratify=y,
                                              random_state=p.seed)
    if p.classifier == "logistic":
        from sklearn.linear_model import LogisticRegression

        clf = LogisticRegression(C=p.C, max_iter=2000, random_state=p.seed)
    else:
        from sklearn.neighbors import KNeighborsClassifier

        clf = KNeighborsClassifier(n_neighbors=min(15, len(y_tr)))
    import warnings

    with warnings.catch_warnings(), single_thread_blas():
        warnings.simplefilter("ignore")  # convergence chatter on near-separable data
        model = make_pipeline(StandardScaler(), clf).fit(X_tr, y_tr)
        pred = model.predict(X_te)
    acc = float(accuracy_score(y_te, pred))
    prec, rec, f1, _ = precision_recall_fscore_support(y_te, pred, average="macro",
                                                       zero_division=0)
    cp, cr, cf, cs = precision_recall_fscore_support(y_te, pred, labels=classes, zero_division=0)
    per_class = {str(c): ClassScores(precision=float(a), recall=float(b), f1=float(f),
                                     support=int(s))
                 for c, a, b, f, s in zip(classes, cp, cr, cf, cs)}
    seconds = time.perf_counter() - t0
    res = RegionResult(key=p.key_added, classifier=p.classifier, n_train=len(y_tr),
                       n_test=len(y_te), n_classes=len(classes), n_unlabelled=int((~ok).sum()),
                       accuracy=acc, precision=float(prec), recall=float(rec), f1=float(f1),
                       per_class=per_class, seconds=seconds)
    adata.uns[p.key_added] = {
        "params": p.model_dump(exclude_none=True, exclude={"dataset"}),
        **res.model_dump(exclude={"per_class", "key"}),
        "per_class": {c: s.model_dump() for c, s in per_class.items()},
    }
    return res
