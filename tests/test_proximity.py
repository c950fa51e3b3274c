"""expression_near: a cell type's genes near vs far from another type."""
import anndata as ad
import numpy as np
import pandas as pd
import pytest

from tools.errors import ParameterError, UnknownKeyError
from tools.proximity import ProximityParams, expression_near


@pytest.fixture
def planted():
    """B cells on a line; A cells sit next to the left half. Gene 'Near1' is up in B cells
    within 6 µm of an A cell (the one above it), 'Far1' is up in the others."""
    rng = np.random.default_rng(0)
    n_b = 200
    xb = np.linspace(0, 1000, n_b)
    xy = np.c_[np.r_[xb, xb[: n_b // 2]], np.r_[np.zeros(n_b), np.full(n_b // 2, 5.0)]]
    types = ["B"] * n_b + ["A"] * (n_b // 2)
    X = rng.poisson(2, (len(types), 30)).astype(np.float32)
    near = np.r_[xb < 500, np.zeros(n_b // 2, bool)]
    X[near, 0] += 8
    X[np.r_[xb >= 500, np.zeros(n_b // 2, bool)], 1] += 8
    genes = ["Near1", "Far1"] + [f"G{i}" for i in range(28)]
    a = ad.AnnData(X, obs=pd.DataFrame({"cell_type": types}, index=[f"c{i}" for i in range(len(types))]),
                   var=pd.DataFrame(index=genes))
    a.obsm["spatial"] = xy
    return a


def test_planted_genes_go_up_and_down(planted):
    before = planted.X.copy()
    r = expression_near(planted, ProximityParams(label_key="cell_type", center="A", cell_type="B",
                                                 radius=6, genes=["near1", "Far1", "G3"]))
    assert (r.n_near, r.n_far) == (100, 100) and r.section_key is None
    got = {g.gene: g.direction for g in r.genes}
    assert got["Near1"] == "up" and got["Far1"] == "down" and got["G3"] == "unchanged"
    assert r.top_up[0].gene == "Near1" and r.top_down[0].gene == "Far1"
    assert r.top_up[0].mean_near > r.top_up[0].mean_far
    assert r.key == "de/B_near_A" and "B_near_A" in planted.uns["de"]
    np.testing.assert_array_equal(planted.X, before)  # the data itself is not changed


def test_bad_inputs_are_named(planted):
    with pytest.raises(UnknownKeyError, match="'C'"):
        expression_near(planted, ProximityParams(label_key="cell_type", center="C", cell_type="B"))
    with pytest.raises(ParameterError, match="both 'A'"):
        expression_near(planted, ProximityParams(label_key="cell_type", center="A", cell_type="A"))
    with pytest.raises(UnknownKeyError, match="gene 'Nope'"):
        expression_near(planted, ProximityParams(label_key="cell_type", center="A", cell_type="B",
                                                 genes=["Nope"]))
    with pytest.raises(ParameterError, match="fewer than min_cells"):
        expression_near(planted, ProximityParams(label_key="cell_type", center="A", cell_type="B",
                                                 radius=2000))


def test_merfish_microglia_near_oligodendrocytes(merfish):
    """Microglia next to mature oligodendrocytes carry more Mbp (measured: logFC > 2, padj < 1e-5);
    distances stay within a section (slice_id found automatically)."""
    a = ad.read_h5ad(merfish)
    r = expression_near(a, ProximityParams(label_key="cell_class", center="OD Mature 2",
                                           cell_type="Microglia", genes=["Mbp"]))
    assert r.section_key == "slice_id"
    mbp = r.genes[0]
    assert mbp.direction == "up" and mbp.logfc > 2 and mbp.padj < 1e-5
