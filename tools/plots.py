"""Figures (PNG): spatial maps of domains against annotations, UMAP of an embedding.

The UMAP comes from umap-learn; its numba JIT makes the first layout in a process slow, so
layouts are cached by a hash of the embedding and the settings ($TISSUETALK_CACHE/umap).
"""
from __future__ import annotations

import contextlib
from pathlib import Path

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
    seed: int = Field(0, ge=0, description="random seed of the layout")
    cache: bool = Field(True, description="reuse a layout cached for the same embedding and "
                        "settings ($TISSUETALK_CACHE/umap)")


class FigureResult(BaseModel):
    figure: str = Field(description="path of the PNG written")
    panels: list[str]


def _save(fig, path: Path) -> None:
    """Write a figure atomically (temp file + rename)."""
    from tools.io import atomic_path

    with atomic_path(path, ".png") as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")


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
def cached_umap(X: np.ndarray, p: UmapPlotParams) -> np.ndarray:
    """UMAP layout of X (umap-learn), through an on-disk cache keyed by X's bytes and p."""
    import hashlib

    from tools.pipeline import cache_root

    X = np.ascontiguousarray(X, dtype=np.float32)
    key = hashlib.sha256(X.tobytes() + repr((X.shape, "umap-learn", p.n_neighbors, p.n_epochs,
                                             p.seed, "umap-v1")).encode()).hexdigest()[:32]
    path = cache_root() / "umap" / f"{key}.npy"
    if p.cache and path.exists():
        try:
            U = np.load(path)
            if U.shape == (X.shape[0], 2):
                return U
        except (OSError, ValueError):
            pass
    import umap

    U = umap.UMAP(n_neighbors=p.n_neighbors, n_epochs=p.n_epochs, random_state=p.seed,
                  n_jobs=1).fit_transform(X).astype(np.float32)
    if p.cache:
        from tools.io import atomic_path

        with contextlib.suppress(OSError), atomic_path(path, ".npy") as tmp:
            np.save(tmp, U)
    return U
