"""Spatial neighbour graph (squidpy) with distance-based edge weights, and feature smoothing.

Writes ``obsp['spatial_connectivities']`` (weighted, symmetric), ``obsp['spatial_distances']``
(Euclidean edge lengths, also for ``grid``, where squidpy stores ring numbers) and
``uns['spatial_neighbors']`` (squidpy's parameters plus the weighting).
"""
from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from tools.errors import DataError, ParameterError, UnknownKeyError, require_obsm
from tools.registry import register


class GraphParams(BaseModel):
    dataset: str = Field("data", description="id of a loaded dataset")
    method: Literal["knn", "radius", "delaunay", "grid"] = Field(
        "grid", description="knn: k nearest spots; radius: all spots within `radius`; "
        "delaunay: Delaunay triangulation; grid: Visium hexagonal lattice")
    n_neighs: int = Field(6, ge=1, le=50, description="neighbours per spot (knn; 6 for a hex grid)")
    radius: float | None = Field(None, gt=0, description="distance cut-off (method 'radius')")
    n_rings: int = Field(1, ge=1, le=5, description="rings of lattice neighbours (method 'grid')")
    weights: Literal["binary", "gaussian", "inverse"] = Field(
        "gaussian", description="edge weight from length d: 1; exp(-d^2 / 2h^2); h / d")
    bandwidth: float | None = Field(
        None, gt=0, description="h for the weights; default the median edge length")
    spatial_key: str = Field("spatial", description="obsm key holding the coordinates")


class GraphResult(BaseModel):
    method: str
    n_spots: int
    n_edges: int = Field(description="undirected edges")
    mean_degree: float
    median_edge_length: float
    n_isolated: int = Field(description="spots with no neighbour")
    n_components: int = Field(description="connected components (isolated spots count)")
    weights: str
    bandwidth: float


def edge_weights(dist: np.ndarray, scheme: str, bandwidth: float) -> np.ndarray:
    """Weight of edges of length `dist`: non-increasing in distance, 1 at length 0 / `bandwidth`."""
    dist = np.asarray(dist, dtype=float)
    if scheme == "binary":
        return np.ones_like(dist)
    if scheme == "gaussian":
        return np.exp(-(dist**2) / (2.0 * bandwidth**2))
    if scheme == "inverse":
        return bandwidth / np.maximum(dist, 1e-12 * bandwidth)
    raise ParameterError(f"unknown weight scheme '{scheme}' (use binary, gaussian or inverse)")


def coordinates(adata, key: str = "spatial") -> np.ndarray:
    """Spot coordinates as float (n, 2+); DataError when absent or not finite."""
    if key not in adata.obsm:
        raise DataError(
            f"no spatial coordinates: obsm['{key}'] is missing "
            f"(available: {', '.join(adata.obsm) or 'none'})")
    xy = np.asarray(adata.obsm[key], dtype=float)
    if xy.ndim != 2 or xy.shape[1] < 2:
        raise DataError(f"obsm['{key}'] must be an (n_spots, 2) array, got shape {xy.shape}")
    if not np.isfinite(xy).all():
        raise DataError(f"obsm['{key}'] has {int((~np.isfinite(xy)).any(1).sum())} spots "
                        "with NaN or infinite coordinates")
    return xy


def graph_summary(conn) -> dict:
    """Edges, degrees, isolated spots and connected components of a symmetric sparse graph."""
    from scipy.sparse.csgraph import connected_components

    deg = np.diff(conn.tocsr().indptr)
    n_comp, _ = connected_components(conn, directed=False)
    return dict(n_edges=int(conn.nnz // 2), mean_degree=float(deg.mean()) if len(deg) else 0.0,
                n_isolated=int((deg == 0).sum()), n_components=int(n_comp))


@register("build_graph", GraphParams, GraphResult, intents=(
    "spatial graph", "neighbour graph", "neighbor graph", "spatial neighbours",
    "spatial neighbors", "build graph"))
def build_graph(adata, p: GraphParams) -> GraphResult:
    """Build the spatial neighbour graph of the spots (squidpy) with distance-based edge weights."""
    import scipy.sparse as sp
    import squidpy as sq

    xy = coordinates(adata, p.spatial_key)
    n = adata.n_obs
    if p.method in ("knn", "grid") and p.n_neighs >= n:
        raise ParameterError(f"n_neighs={p.n_neighs} needs more spots than the {n} in the data")
    if p.method == "delaunay" and n < 3:
        raise ParameterError(f"a Delaunay graph needs at least 3 spots, the data has {n}")
    if p.method == "radius" and p.radius is None:
        raise ParameterError("method 'radius' needs `radius` (a distance in coordinate units)")

    kw = dict(spatial_key=p.spatial_key, copy=True)
    if p.method == "grid":
        kw.update(coord_type="grid", n_neighs=p.n_neighs, n_rings=p.n_rings)
    elif p.method == "knn":
        kw.update(coord_type="generic", n_neighs=p.n_neighs)
    elif p.method == "radius":
        kw.update(coord_type="generic", radius=p.radius)
    else:
        kw.update(coord_type="generic", delaunay=True)
    conn, _ = sq.gr.spatial_neighbors(adata, **kw)

    # symmetrise (kNN is directed), drop self loops, measure every edge in coordinate units
    conn = sp.csr_matrix(conn)
    conn = ((conn + conn.T) > 0).astype(np.float64).tocoo()
    keep = conn.row != conn.col
    rows, cols = conn.row[keep], conn.col[keep]
    dist = np.linalg.norm(xy[rows] - xy[cols], axis=1)
    median_len = float(np.median(dist)) if len(dist) else 0.0
    h = p.bandwidth or median_len or 1.0
    w = edge_weights(dist, p.weights, h)
    adata.obsp["spatial_connectivities"] = sp.csr_matrix((w, (rows, cols)), shape=(n, n))
    adata.obsp["spatial_distances"] = sp.csr_matrix((dist, (rows, cols)), shape=(n, n))
    adata.uns["spatial_neighbors"] = {
        "connectivities_key": "spatial_connectivities",
        "distances_key": "spatial_distances",
        "params": {"method": p.method, "n_neighs": p.n_neighs, "radius": p.radius,
                   "n_rings": p.n_rings, "weights": p.weights, "bandwidth": float(h),
                   "spatial_key": p.spatial_key},
    }
    s = graph_summary(adata.obsp["spatial_connectivities"])
    return GraphResult(method=p.method, n_spots=n, median_edge_length=median_len,
                       weights=p.weights, bandwidth=float(h), **s)


def smooth_features(adata, use_rep: str = "X_pca", adjacency_key: str = "spatial_connectivities",
                    n_rounds: int = 1) -> np.ndarray:
    """Features averaged over the graph: z <- (z + weighted mean of neighbours' z) / 2, per round.

    Spots without neighbours keep their own features. Returns a new array; `adata` is unchanged.
    """
    require_obsm(adata, use_rep)
    if adjacency_key not in adata.obsp:
        raise UnknownKeyError(f"obsp key '{adjacency_key}' not found (available: "
                              f"{', '.join(adata.obsp) or 'none'}); run build_graph first")
    if n_rounds < 0:
        raise ParameterError(f"n_rounds must be >= 0, got {n_rounds}")
    return smooth_array(adata.obsm[use_rep], adata.obsp[adjacency_key], n_rounds)


def smooth_array(z, conn, n_rounds: int) -> np.ndarray:
    """`n_rounds` of z <- (z + weighted mean of neighbours' z) / 2 over the graph `conn`."""
    import scipy.sparse as sp

    z = np.asarray(z, dtype=np.float64).copy()
    a = sp.csr_matrix(conn, dtype=np.float64)
    a.setdiag(0)
    a.eliminate_zeros()
    deg = np.asarray(a.sum(axis=1)).ravel()
    # row-normalised with the spot itself at weight 1/2 (all of it when it has no neighbour)
    inv = np.divide(0.5, deg, out=np.zeros_like(deg), where=deg > 0)
    own = np.where(deg > 0, 0.5, 1.0)
    p = sp.diags(inv) @ a + sp.diags(own)
    for _ in range(n_rounds):
        z = p @ z
    return z
