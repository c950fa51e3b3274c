"""tools.simulate: the demo tissue is Visium-like, layered, deterministic and not trivial."""
import numpy as np
import pytest
from scipy import sparse

from tools.data import PreprocessParams, load_data, LoadParams, matrix_stats, preprocess
from tools.simulate import LAYER_FRACTIONS, LAYERS, demo_path, simulate_tissue


@pytest.fixture(scope="module")
def demo():
    return simulate_tissue(seed=0)


def test_size_counts_and_metadata(demo):
    assert 1800 <= demo.n_obs <= 2300 and 350 <= demo.n_vars <= 500
    assert sparse.issparse(demo.X)
    assert matrix_stats(demo.X) == {"nonfinite": 0, "negative": 0, "noninteger": 0}
    info = demo.uns["dataset_info"]
    assert info["name"] == "tissuetalk demo cortex" and info["simulated"] is True
    assert list(demo.obs["ground_truth"].cat.categories) == list(LAYERS)
    assert demo.var_names.is_unique and demo.obs_names.is_unique
    assert {"RELN", "CUX2", "RORB", "PCP4", "NR4A2", "CCN2", "MBP", "MOBP", "GAPDH"} <= set(demo.var_names)
    lib = np.asarray(demo.X.sum(1)).ravel()
    assert 500 < np.median(lib) < 5000 and lib.std() / lib.mean() > 0.3  # spot-specific depth


def test_deterministic_for_a_seed(demo):
    again = simulate_tissue(seed=0)
    assert (demo.X != again.X).nnz == 0
    assert (demo.obs["ground_truth"] == again.obs["ground_truth"]).all()
    other = simulate_tissue(seed=1)
    assert other.shape[1] == demo.shape[1] and (other.X[:50] != demo.X[:50]).nnz > 0


def test_visium_hex_geometry(demo):
    from scipy.spatial import cKDTree

    rows, cols = demo.obs["array_row"].to_numpy(), demo.obs["array_col"].to_numpy()
    assert ((rows - cols) % 2 == 0).all()  # Visium parity
    xy = demo.obsm["spatial"]
    d, _ = cKDTree(xy).query(xy, k=7)
    np.testing.assert_allclose(d[:, 1], 100.0)  # centre-to-centre spacing
    interior = (d[:, 1:] < 100.5).sum(1)
    assert interior.max() == 6 and (interior == 6).mean() > 0.8


def test_layers_curved_ordered_and_dlpfc_thick(demo):
    gt = demo.obs["ground_truth"].to_numpy()
    frac = np.array([(gt == k).mean() for k in LAYERS])
    np.testing.assert_allclose(frac, LAYER_FRACTIONS, atol=0.01)
    y, x = demo.obsm["spatial"][:, 1], demo.obsm["spatial"][:, 0]
    assert np.all(np.diff([y[gt == k].mean() for k in LAYERS]) > 0)  # pia at top, WM at bottom
    wm = gt == "WM"  # the top edge of white matter moves by several rows across the slice
    bins = np.digitize(x, np.quantile(x, [0.2, 0.4, 0.6, 0.8]))
    tops = [y[wm & (bins == b)].min() for b in range(5)]
    assert np.ptp(tops) > 3 * 86.6


MARKERS = {"RELN": "Layer1", "AQP4": "Layer1", "LAMP5": "Layer2", "CUX2": "Layer3",
           "RORB": "Layer4", "PCP4": "Layer5", "FEZF2": "Layer5", "NR4A2": "Layer6",
           "CCN2": "Layer6", "MBP": "WM", "PLP1": "WM", "MOBP": "WM"}


@pytest.mark.parametrize("gene,layer", MARKERS.items())
def test_markers_enriched_in_their_layer(demo, gene, layer):
    x = demo[:, gene].X.toarray().ravel()
    inside = (demo.obs["ground_truth"] == layer).to_numpy()
    assert x[inside].mean() > 1.5 * x[~inside].mean()
    if layer in ("Layer1", "WM") or gene in ("RORB", "CCN2", "FEZF2"):
        assert x[inside].mean() > 2 * x[~inside].mean()


def _smoothed_gmm_ari(adata, rounds: int) -> float:
    import squidpy as sq
    from sklearn.metrics import adjusted_rand_score
    from sklearn.mixture import GaussianMixture

    sq.gr.spatial_neighbors_grid(adata, n_neighs=6)
    A = adata.obsp["spatial_connectivities"] + sparse.eye(adata.n_obs)
    A = sparse.diags(1 / np.asarray(A.sum(1)).ravel()) @ A
    z = adata.obsm["X_pca"]
    for _ in range(rounds):
        z = A @ z
    lab = GaussianMixture(7, covariance_type="diag", random_state=0).fit_predict(z)
    return adjusted_rand_score(adata.obs["ground_truth"], lab)


def test_domains_recoverable_but_not_trivial(demo):
    a = demo.copy()
    preprocess(a, PreprocessParams(n_comps=15))
    raw, smooth = _smoothed_gmm_ari(a, 0), _smoothed_gmm_ari(a, 2)
    print(f"ARI GMM(7) on PCA {raw:.3f}, on spatially smoothed PCA {smooth:.3f}")
    assert 0.3 < smooth < 0.95  # seed 0: ~0.67
    assert raw < smooth - 0.2  # space matters: expression alone is noisy


def test_demo_path_writes_once_and_loads(tmp_path):
    p = demo_path(tmp_path / "work")
    assert p.exists() and [f.name for f in p.parent.iterdir()] == [p.name]  # no temp file left
    stamp = p.stat().st_mtime_ns
    assert demo_path(tmp_path / "work") == p and p.stat().st_mtime_ns == stamp
    a, res = load_data(LoadParams(path=str(p), name="demo"))
    assert res.has_counts and res.n_spots == a.n_obs > 1800 and res.notes == []
    assert a.uns["dataset_info"]["simulated"]
