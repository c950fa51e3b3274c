"""Figures (PNG): spatial maps of domains against annotations, UMAP of an embedding.

The UMAP is computed by default with a vectorised numpy implementation of UMAP
(McInnes et al. 2018: fuzzy kNN graph with per-point bandwidths, fuzzy union, the same
attraction / negative-sampling repulsion objective and a/b curve), optimised in synchronous
batches instead of umap-learn's sequential numba SGD. umap-learn's numba JIT costs 20-200 s on a
cold start on 2 shared cores; this costs about a second for 4,000 spots. Layouts are cached by a
hash of the embedding and the settings.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from tools.errors import ParameterError, require_obs, require_obsm
from tools.registry import register


class SpatialPlotParams(BaseModel):
    dataset: str = Field("data", description="id of a loaded dataset")
    keys: list[str] = Field(["domain"], min_length=1, max_length=4,
                            description="obs columns to map side by side (e.g. domain, ground_truth)")
    name: str = Field("spatial_domains", pattern=r"^[A-Za-z0-9_.-]{1,64}$",
                      description="file name stem of the figure")
    spot_size: float = Field(12.0, gt=0, le=200, description="marker size")


class UmapPlotParams(BaseModel):
    dataset: str = Field("data", description="id of a loaded dataset")
    embedding: str = Field("X_pca", description="obsm key to project")
    color: str = Field("domain", description="obs column for the colours")
    name: str = Field("umap", pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="file name stem")
    n_neighbors: int = Field(15, ge=2, le=200, description="UMAP neighbours")
    n_epochs: int = Field(200, ge=10, le=1000, description="layout optimisation epochs")
    backend: Literal["numpy", "umap-learn"] = Field(
        "numpy", description="numpy: this module's vectorised UMAP (no JIT, seconds); "
        "umap-learn: the reference package (numba JIT: slow on a cold start)")
    seed: int = Field(0, ge=0, description="random seed of the layout")
    cache: bool = Field(True, description="reuse a layout cached for the same embedding and "
                        "settings ($TISSUETALK_CACHE/umap)")


class FigureResult(BaseModel):
    figure: str = Field(description="path of the PNG written")
    panels: list[str]


def _save(fig, path: Path) -> None:
    """Write a figure atomically (temp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".png")
    os.close(fd)
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    os.replace(tmp, path)


def _categorical_colours(values):
    import matplotlib

    cats = sorted({str(v) for v in values if str(v) != "nan"})
    cmap = matplotlib.colormaps["tab20"]
    return {c: cmap(i % 20) for i, c in enumerate(cats)}


def _scatter(ax, xy, values, title, size, invert_y: bool):
    colours = _categorical_colours(values)
    vals = np.array([str(v) for v in values])
    nan = vals == "nan"
    if nan.any():
        ax.scatter(xy[nan, 0], xy[nan, 1], s=size, c="lightgrey", linewidths=0, label="NA")
    for c, col in colours.items():
        m = vals == c
        ax.scatter(xy[m, 0], xy[m, 1], s=size, color=col, linewidths=0, label=c)
    ax.set_title(title)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    if invert_y:
        ax.invert_yaxis()
    ax.legend(loc="center left", bbox_to_anchor=(1, 0.5), fontsize=7, markerscale=1.5, frameon=False)


@register("plot_spatial", SpatialPlotParams, FigureResult, writes_files=True,
          intents=("plot", "map", "show the domains", "spatial map", "figure"))
def plot_spatial(adata, p: SpatialPlotParams, *, workdir) -> FigureResult:
    """Spatial map of one or more obs columns (e.g. domains next to ground truth)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    require_obsm(adata, "spatial")
    for k in p.keys:
        require_obs(adata, k)
    xy = np.asarray(adata.obsm["spatial"], dtype=float)
    fig, axes = plt.subplots(1, len(p.keys), figsize=(5.2 * len(p.keys), 4.6), squeeze=False)
    for ax, k in zip(axes[0], p.keys):
        _scatter(ax, xy, adata.obs[k].astype(str).to_numpy(), k, p.spot_size, invert_y=True)
    path = Path(workdir) / f"{p.name}.png"
    _save(fig, path)
    plt.close(fig)
    return FigureResult(figure=str(path), panels=list(p.keys))


@register("plot_umap", UmapPlotParams, FigureResult, writes_files=True,
          intents=("umap", "embedding plot", "visualise the embedding"))
def plot_umap(adata, p: UmapPlotParams, *, workdir) -> FigureResult:
    """UMAP of an embedding, coloured by an obs column; writes obsm['X_umap_<embedding>']."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    require_obsm(adata, p.embedding)
    require_obs(adata, p.color)
    X = np.asarray(adata.obsm[p.embedding], dtype=np.float32)
    if X.ndim != 2 or not np.isfinite(X).all():
        raise ParameterError(f"obsm['{p.embedding}'] must be a finite (n_spots, n_features) array")
    if X.shape[0] < 4:
        raise ParameterError(f"a UMAP needs at least 4 spots, the data has {X.shape[0]}")
    U = cached_umap(X, p)
    adata.obsm[f"X_umap_{p.embedding}"] = U
    fig, ax = plt.subplots(figsize=(5.6, 4.6))
    _scatter(ax, U, adata.obs[p.color].astype(str).to_numpy(), f"UMAP of {p.embedding}",
             4.0, invert_y=False)
    path = Path(workdir) / f"{p.name}.png"
    _save(fig, path)
    plt.close(fig)
    return FigureResult(figure=str(path), panels=[p.color])


# ---------------------------------------------------------------- UMAP
def _ab(min_dist: float = 0.1, spread: float = 1.0) -> tuple[float, float]:
    """UMAP's a, b: least-squares fit of 1 / (1 + a d^2b) to the min_dist / spread curve."""
    from scipy.optimize import curve_fit

    x = np.linspace(0, spread * 3, 300)
    y = np.where(x < min_dist, 1.0, np.exp(-(x - min_dist) / spread))
    (a, b), _ = curve_fit(lambda d, a, b: 1.0 / (1.0 + a * d ** (2 * b)), x, y)
    return float(a), float(b)


def umap_numpy(X: np.ndarray, n_neighbors: int = 15, n_epochs: int = 200, min_dist: float = 0.1,
               negative_rate: int = 5, seed: int = 0) -> np.ndarray:
    """2-D UMAP layout of the rows of X (see the module docstring)."""
    from tools.domains import fuzzy_knn_graph

    G = fuzzy_knn_graph(X, n_neighbors)
    keep = G.data >= G.data.max() / n_epochs  # as umap-learn: edges too weak to be sampled
    head, tail, w = G.row[keep], G.col[keep], G.data[keep]
    a, b = _ab(min_dist)
    rng = np.random.default_rng(seed)
    n = X.shape[0]
    # initial layout: leading principal components scaled to [-10, 10] (umap-learn's range)
    Xc = X - X.mean(0)
    _, _, vt = np.linalg.svd(Xc[:, :min(X.shape[1], 50)], full_matrices=False)
    Y = Xc[:, :vt.shape[1]] @ vt[:2].T if vt.shape[0] >= 2 else rng.normal(size=(n, 2))
    Y = 20 * (Y - Y.min(0)) / np.maximum(np.ptp(Y, 0), 1e-12) - 10
    Y = Y + rng.normal(scale=1e-4, size=Y.shape)
    prob = w / w.max()
    for epoch in range(n_epochs):
        alpha = 1.0 - epoch / n_epochs
        m = rng.random(len(prob)) < prob  # each edge about w / w_max times per epoch
        i, j = head[m], tail[m]
        diff = Y[i] - Y[j]
        d2 = (diff ** 2).sum(1)
        coef = np.where(d2 > 0, -2 * a * b * d2 ** (b - 1) / (1 + a * d2 ** b), 0.0)
        g = np.clip(coef[:, None] * diff, -4, 4)
        grad = np.zeros_like(Y)
        for c in (0, 1):
            grad[:, c] += np.bincount(i, g[:, c], n) - np.bincount(j, g[:, c], n)
        ii = np.repeat(i, negative_rate)
        kk = rng.integers(0, n, size=len(ii))
        diff = Y[ii] - Y[kk]
        d2 = (diff ** 2).sum(1)
        coef = 2 * b / ((0.001 + d2) * (1 + a * d2 ** b))
        g = np.where((d2 > 0)[:, None], np.clip(coef[:, None] * diff, -4, 4), 4.0)
        g[ii == kk] = 0.0
        for c in (0, 1):
            grad[:, c] += np.bincount(ii, g[:, c], n)
        Y += alpha * grad
    return Y.astype(np.float32)


def cached_umap(X: np.ndarray, p: UmapPlotParams) -> np.ndarray:
    """UMAP layout of X by p.backend, through an on-disk cache keyed by X's bytes and p."""
    import hashlib

    from tools.pipeline import cache_root

    X = np.ascontiguousarray(X, dtype=np.float32)
    key = hashlib.sha256(X.tobytes() + repr((X.shape, p.backend, p.n_neighbors, p.n_epochs,
                                             p.seed, "umap-v1")).encode()).hexdigest()[:32]
    path = cache_root() / "umap" / f"{key}.npy"
    if p.cache and path.exists():
        try:
            U = np.load(path)
            if U.shape == (X.shape[0], 2):
                return U
        except (OSError, ValueError):
            pass
    if p.backend == "umap-learn":
        import umap

        U = umap.UMAP(n_neighbors=p.n_neighbors, n_epochs=p.n_epochs, random_state=p.seed,
                      n_jobs=1).fit_transform(X).astype(np.float32)
    else:
        U = umap_numpy(X, n_neighbors=p.n_neighbors, n_epochs=p.n_epochs, seed=p.seed)
    if p.cache:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npy")
            with os.fdopen(fd, "wb") as f:
                np.save(f, U)
            os.replace(tmp, path)
        except OSError:
            pass
    return U
