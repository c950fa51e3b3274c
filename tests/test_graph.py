"""Spatial graph (tools.graph) and ST-LLM adaptive adjacency (tools.adjacency)."""
import numpy as np
import pytest
import scipy.sparse as sp

from tools.adjacency import RefineParams, _State, quality_terms, refine_adjacency
from tools.errors import DataError, ParameterError, UnknownKeyError
from tools.graph import GraphParams, build_graph, graph_summary, smooth_features


def hex_grid(n_rows=12, n_cols=12, spacing=1.0):
    """Visium-like hexagonal lattice: odd rows shifted by half a spacing."""
    r, c = np.divmod(np.arange(n_rows * n_cols), n_cols)
    x = (c + 0.5 * (r % 2)) * spacing
    y = r * spacing * np.sqrt(3) / 2
    return np.c_[x, y], r, c


def make_adata(xy, x=None, **obsm):
    import anndata as ad

    x = np.zeros((len(xy), 3), dtype=np.float32) if x is None else x
    return ad.AnnData(X=x, obsm={"spatial": np.asarray(xy, float), **obsm})


def degrees(a, key="spatial_connectivities"):
    return np.diff(sp.csr_matrix(a.obsp[key]).indptr)


def pairwise(xy):
    return np.linalg.norm(xy[:, None] - xy[None], axis=-1)


# ---------------------------------------------------------------- build_graph
def test_grid_interior_spots_have_six_neighbours():
    xy, r, c = hex_grid()
    a = make_adata(xy)
    res = build_graph(a, GraphParams(method="grid", n_neighs=6))
    deg = degrees(a)
    interior = (r > 0) & (r < r.max()) & (c > 0) & (c < c.max())
    assert (deg[interior] == 6).all()
    assert (deg[~interior] < 6).all()
    d = pairwise(xy)
    rows, cols = a.obsp["spatial_connectivities"].nonzero()
    assert np.allclose(d[rows, cols], 1.0)  # only the first ring
    assert res.n_components == 1 and res.n_isolated == 0
    assert res.median_edge_length == pytest.approx(1.0)
    assert res.n_edges == len(rows) // 2


def test_grid_two_rings_reach_second_ring():
    xy, r, c = hex_grid()
    a = make_adata(xy)
    build_graph(a, GraphParams(method="grid", n_rings=2))
    deep = (r > 1) & (r < r.max() - 1) & (c > 1) & (c < c.max() - 1)
    assert (degrees(a)[deep] == 18).all()  # 6 + 12 lattice spots within two hops


def test_knn_includes_k_nearest_and_is_symmetric():
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 10, size=(80, 2))
    a = make_adata(xy)
    build_graph(a, GraphParams(method="knn", n_neighs=4, weights="binary"))
    conn = a.obsp["spatial_connectivities"]
    assert (conn != conn.T).nnz == 0
    assert (degrees(a) >= 4).all()
    d = pairwise(xy)
    np.fill_diagonal(d, np.inf)
    nearest4 = np.argsort(d, axis=1)[:, :4]
    dense = conn.toarray()
    assert all(dense[i, nearest4[i]].all() for i in range(len(xy)))
    assert set(np.unique(conn.data)) == {1.0}


def test_radius_graph_is_exactly_the_pairs_within_radius():
    rng = np.random.default_rng(2)
    xy = rng.uniform(0, 10, size=(100, 2))
    a = make_adata(xy)
    res = build_graph(a, GraphParams(method="radius", radius=1.5))
    d = pairwise(xy)
    expect = (d <= 1.5) & ~np.eye(len(xy), dtype=bool)
    got = a.obsp["spatial_connectivities"].toarray() > 0
    assert (got == expect).all()
    assert res.n_isolated == int((expect.sum(1) == 0).sum())


def test_delaunay_is_planar_and_connected():
    rng = np.random.default_rng(3)
    xy = rng.uniform(0, 10, size=(60, 2))
    a = make_adata(xy)
    res = build_graph(a, GraphParams(method="delaunay"))
    assert res.n_components == 1
    assert res.n_edges <= 3 * len(xy) - 6


@pytest.mark.parametrize("scheme", ["gaussian", "inverse", "binary"])
def test_weights_monotone_in_distance_and_symmetric(scheme):
    rng = np.random.default_rng(4)
    xy = rng.uniform(0, 10, size=(120, 2))
    a = make_adata(xy)
    res = build_graph(a, GraphParams(method="knn", n_neighs=8, weights=scheme))
    conn, dist = a.obsp["spatial_connectivities"], a.obsp["spatial_distances"]
    assert abs(conn - conn.T).max() == 0
    rows, cols = conn.nonzero()
    length = np.asarray(dist[rows, cols]).ravel()
    assert np.allclose(length, np.linalg.norm(xy[rows] - xy[cols], axis=1))
    w = np.asarray(conn[rows, cols]).ravel()
    order = np.argsort(length)
    assert (np.diff(w[order]) <= 1e-12).all()
    if scheme != "binary":
        assert w.max() > w.min()
        med = np.argmin(abs(length - res.bandwidth))
        assert res.bandwidth == pytest.approx(np.median(length))
        expect = np.exp(-0.5) if scheme == "gaussian" else 1.0
        assert w[med] == pytest.approx(expect, rel=0.05)


def test_far_spot_is_reported_isolated():
    xy, *_ = hex_grid(5, 5)
    a = make_adata(np.r_[xy, [[100.0, 100.0]]])
    res = build_graph(a, GraphParams(method="radius", radius=1.1))
    assert res.n_isolated == 1 and res.n_components == 2


def test_graph_errors():
    xy, *_ = hex_grid(3, 3)
    a = make_adata(xy)
    del a.obsm["spatial"]
    with pytest.raises(DataError, match="spatial"):
        build_graph(a, GraphParams())
    a = make_adata(xy)
    with pytest.raises(ParameterError, match="n_neighs=9"):
        build_graph(a, GraphParams(method="knn", n_neighs=9))
    with pytest.raises(ParameterError, match="radius"):
        build_graph(a, GraphParams(method="radius"))
    bad = xy.copy()
    bad[0, 0] = np.nan
    with pytest.raises(DataError, match="NaN"):
        build_graph(make_adata(bad), GraphParams(method="knn", n_neighs=3))


# ---------------------------------------------------------------- smooth_features
def test_smooth_features_averages_with_neighbours():
    xy = np.array([[0.0, 0.0], [1.0, 0.0], [50.0, 0.0]])
    z = np.array([[0.0], [2.0], [7.0]])
    a = make_adata(xy, X_pca=z)
    build_graph(a, GraphParams(method="radius", radius=1.5, weights="binary"))
    once = smooth_features(a, "X_pca", n_rounds=1)
    assert np.allclose(once[:, 0], [1.0, 1.0, 7.0])  # (z + neighbour) / 2; isolated unchanged
    assert np.allclose(smooth_features(a, "X_pca", n_rounds=0), z)
    assert np.allclose(a.obsm["X_pca"], z)  # input untouched


def test_smooth_features_reduces_noise_on_a_grid():
    xy, r, c = hex_grid(15, 15)
    rng = np.random.default_rng(5)
    signal = (c >= 7).astype(float)[:, None] * np.ones((1, 5))
    z = signal + rng.normal(0, 0.5, size=signal.shape)
    a = make_adata(xy, X_pca=z)
    build_graph(a, GraphParams(method="grid"))
    err = [np.mean((smooth_features(a, "X_pca", n_rounds=k) - signal) ** 2) for k in (0, 1, 2)]
    assert err[2] < err[1] < err[0]
    with pytest.raises(UnknownKeyError, match="stllm_adjacency"):
        smooth_features(a, "X_pca", adjacency_key="stllm_adjacency")


# ---------------------------------------------------------------- refine_adjacency
def planted(n=16, noise=0.6, seed=0):
    """Hex grid whose left and right halves have different feature profiles."""
    xy, r, c = hex_grid(n, n)
    group = (c >= n // 2).astype(int)
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, size=(2, 10))
    z = centres[group] + rng.normal(0, noise, size=(len(xy), 10))
    a = make_adata(xy, X_pca=z)
    a.obs["group"] = group.astype(str)
    build_graph(a, GraphParams(method="grid"))
    return a, group


def edge_set(m):
    rows, cols = sp.triu(m, k=1).nonzero()
    return set(zip(rows.tolist(), cols.tolist()))


def test_refinement_cuts_cross_group_edges_on_planted_data():
    a, group = planted()
    start = a.obsp["spatial_connectivities"].copy()
    res = refine_adjacency(a, RefineParams(n_steps=300, epsilon=0.0, seed=0))
    assert res.after.Q > res.before.Q
    assert res.after.consist > res.before.consist and res.after.task > res.before.task
    before, after = edge_set(start), edge_set(a.obsp["stllm_adjacency"])
    cross = {e for e in before if group[e[0]] != group[e[1]]}
    within = before - cross
    frac_cross = len(cross - after) / len(cross)
    frac_within = len(within - after) / len(within)
    assert frac_cross > 0.3 and frac_cross > 3 * frac_within
    added = after - before
    assert sum(group[i] != group[j] for i, j in added) < 0.1 * max(len(added), 1)
    assert res.n_isolated == 0 and res.n_components == 1
    assert (a.obsp["spatial_connectivities"] != start).nnz == 0  # start graph untouched
    u = a.uns["stllm_adjacency"]
    assert u["before"]["Q"] == pytest.approx(res.before.Q)
    assert u["n_removed"] == res.n_removed and u["params"]["n_steps"] == 300


def test_refinement_respects_degree_bounds_and_radius():
    a, _ = planted(12)
    deg0 = degrees(a)
    refine_adjacency(a, RefineParams(n_steps=800, epsilon=0.3, min_degree=3, max_degree=8,
                                     radius_factor=2.0))
    deg = degrees(a, "stllm_adjacency")
    assert (deg >= np.minimum(deg0, 3)).all() and (deg <= np.maximum(deg0, 8)).all()
    rows, cols = a.obsp["stllm_adjacency"].nonzero()
    xy = a.obsm["spatial"]
    assert np.linalg.norm(xy[rows] - xy[cols], axis=1).max() <= 2.0 + 1e-9
    m = a.obsp["stllm_adjacency"]
    assert abs(m - m.T).max() == 0


def test_refinement_is_deterministic_for_a_seed():
    a, _ = planted(10)
    b = a.copy()
    p = RefineParams(n_steps=400, epsilon=0.2, seed=7)
    ra, rb = refine_adjacency(a, p), refine_adjacency(b, p)
    assert ra == rb
    assert (a.obsp["stllm_adjacency"] != b.obsp["stllm_adjacency"]).nnz == 0


def test_label_agreement_task_removes_cross_label_edges():
    a, group = planted(12, noise=3.0)
    res = refine_adjacency(a, RefineParams(task="label_agreement", label_key="group",
                                           n_steps=800, epsilon=0.0, b=0.0))
    assert res.after.task > res.before.task
    rows, cols = sp.triu(a.obsp["stllm_adjacency"], k=1).nonzero()
    r0, c0 = sp.triu(a.obsp["spatial_connectivities"], k=1).nonzero()
    assert (group[rows] != group[cols]).mean() < (group[r0] != group[c0]).mean()


@pytest.mark.parametrize("task", ["neighbour_prediction", "label_agreement"])
def test_incremental_terms_match_recomputation(task):
    a, group = planted(8)
    labels = group if task == "label_agreement" else None
    z, conn = a.obsm["X_pca"], a.obsp["spatial_connectivities"]
    st = _State(conn, z, 6, 1.0, 0.5, 2.0, labels)
    rng = np.random.default_rng(0)
    xy = a.obsm["spatial"]
    d = pairwise(xy)
    for _ in range(60):
        if rng.random() < 0.5:
            i, j = st.edges[rng.integers(len(st.edges))]
            if st.deg[i] > 1 and st.deg[j] > 1 and st.still_joined(i, j, 3):
                q0 = sum(w * t for w, t in zip((1.0, 0.5, 2.0), st.terms()))
                dq = st.deltas(np.array([i]), np.array([j]), np.array([st.nbr[i][j]]),
                               np.array([-1]))[0]
                st.apply(i, j, st.nbr[i][j], -1)
                q1 = sum(w * t for w, t in zip((1.0, 0.5, 2.0), st.terms()))
                assert q1 - q0 == pytest.approx(dq, abs=1e-9)
        else:
            i, j = sorted(rng.choice(len(xy), 2, replace=False).tolist())
            if j not in st.nbr[i] and d[i, j] < 2.5:
                st.apply(i, j, float(np.exp(-d[i, j])), 1)
    scratch = quality_terms(st.matrix(), z, 6, 1.0, 0.5, 2.0, labels)
    assert np.allclose(st.terms(), (scratch.conn, scratch.consist, scratch.task))


def test_refine_errors():
    a, _ = planted(6)
    with pytest.raises(UnknownKeyError, match="X_umap"):
        refine_adjacency(a, RefineParams(use_rep="X_umap"))
    with pytest.raises(ParameterError, match="label_key"):
        refine_adjacency(a, RefineParams(task="label_agreement"))
    with pytest.raises(ParameterError, match="min_degree"):
        refine_adjacency(a, RefineParams(min_degree=5, max_degree=3))
    del a.obsp["spatial_connectivities"]
    with pytest.raises(UnknownKeyError, match="build_graph"):
        refine_adjacency(a, RefineParams())


# ---------------------------------------------------------------- real data
def test_refinement_on_dlpfc_fixture(dlpfc_hvg300):
    import anndata as ad
    import scanpy as sc

    a = ad.read_h5ad(dlpfc_hvg300)
    sc.pp.normalize_total(a)
    sc.pp.log1p(a)
    sc.pp.pca(a, n_comps=20, random_state=0)
    g = build_graph(a, GraphParams(method="grid"))
    assert 5.5 < g.mean_degree <= 6 and g.n_isolated <= 5  # Visium hex lattice
    deg0 = degrees(a)
    res = refine_adjacency(a, RefineParams(n_steps=1500, seed=0))
    assert res.after.consist > res.before.consist and res.after.Q > res.before.Q
    assert res.n_components <= g.n_components and res.n_isolated <= g.n_isolated
    deg = degrees(a, "stllm_adjacency")
    assert (deg[deg0 > 0] >= 1).all()
    s = graph_summary(a.obsp["stllm_adjacency"])
    assert s["n_edges"] == res.n_edges
    smoothed = smooth_features(a, "X_pca", "stllm_adjacency", n_rounds=2)
    assert smoothed.shape == a.obsm["X_pca"].shape and np.isfinite(smoothed).all()


def test_refinement_never_cuts_a_bridge():
    """Two far-apart patches joined by one dissimilar edge: removing it would split the graph."""
    xy, *_ = hex_grid(5, 5)
    both = np.r_[xy, xy + [20.0, 0.0]]
    group = np.repeat([0, 1], len(xy))
    rng = np.random.default_rng(3)
    z = rng.normal(0, 1, size=(2, 6))[group] + rng.normal(0, 0.2, size=(len(both), 6))
    a = make_adata(both, X_pca=z)
    build_graph(a, GraphParams(method="grid", weights="binary"))
    conn = a.obsp["spatial_connectivities"].tolil()
    conn[12, 25 + 12] = conn[25 + 12, 12] = 1.0  # the bridge, between two interior spots
    a.obsp["spatial_connectivities"] = conn.tocsr()
    res = refine_adjacency(a, RefineParams(n_steps=500, epsilon=0.0, a=0.1))
    assert res.n_components == 1
    assert a.obsp["stllm_adjacency"][12, 37] == 1.0
