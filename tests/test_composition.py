"""Region and neighbourhood composition: planted layouts and real MERFISH / osmFISH."""
import numpy as np
import pandas as pd
import pytest

from tools.composition import (NeighbourhoodParams, RegionParams, neighbourhood_composition,
                               region_composition)
from tools.errors import ParameterError, UnknownKeyError


def layout(seed=0):
    """Left half: A and B cells mixed; right half: C cells (+ a few B). 10 µm grid."""
    import anndata as ad

    rng = np.random.default_rng(seed)
    xs, ys = np.meshgrid(np.arange(40) * 10.0, np.arange(20) * 10.0)
    xy = np.c_[xs.ravel(), ys.ravel()]
    left = xy[:, 0] < 200
    lab = np.where(left, rng.choice(["A", "B"], size=len(xy)), "C")
    lab[~left & (rng.random(len(xy)) < 0.1)] = "B"
    obs = pd.DataFrame({"cell_type": pd.Categorical(lab),
                        "region": np.where(left, "west", "east")},
                       index=[f"c{i}" for i in range(len(xy))])
    a = ad.AnnData(X=np.zeros((len(xy), 2), np.float32), obs=obs)
    a.obsm["spatial"] = xy
    return a


def test_neighbourhood_planted_enrichment_and_depletion():
    a = layout()
    r = neighbourhood_composition(a, NeighbourhoodParams(label_key="cell_type", cell_type="A",
                                                         radius=15, n_perms=100))
    rows = {x.label: x for x in r.rows}
    assert rows["B"].ratio > 1.5 and rows["B"].zscore > 3
    assert rows["C"].count < 0.05 * r.n_cells and rows["C"].zscore < -3
    assert 7 < r.mean_neighbours <= 8  # 8-neighbour grid within 15 µm (fewer at the edges)
    assert "nhood:cell_type=A" in a.uns["composition"]
    assert "spatial_connectivities" not in a.obsp  # the user's graph is not touched
    k = neighbourhood_composition(a, NeighbourhoodParams(label_key="cell_type", cell_type="C", k=6,
                                                         n_perms=100))
    assert k.method == "knn" and k.mean_neighbours == 6
    assert {x.label: x for x in k.rows}["C"].zscore > 3


def test_region_composition_counts():
    a = layout()
    r = region_composition(a, RegionParams(label_key="cell_type", region_key="region",
                                           region="east"))
    rows = {x.label: x for x in r.rows}
    assert "A" not in rows or rows["A"].count == 0
    assert rows["C"].count == (a.obs["cell_type"][a.obs["region"] == "east"] == "C").sum()
    assert rows["C"].ratio > 1.5 and rows["C"].pval < 1e-10
    assert sum(x.fraction for x in r.rows) == pytest.approx(1.0)


def test_composition_errors():
    a = layout()
    with pytest.raises(UnknownKeyError, match="did you mean"):
        neighbourhood_composition(a, NeighbourhoodParams(label_key="cell_type", cell_type="Ax"))
    with pytest.raises(ParameterError, match="empty neighbourhood"):
        neighbourhood_composition(a, NeighbourhoodParams(label_key="cell_type", cell_type="A",
                                                         radius=1))
    with pytest.raises(UnknownKeyError, match="region"):
        region_composition(a, RegionParams(label_key="cell_type", region_key="region",
                                           region="north"))
    del a.obsm["spatial"]
    with pytest.raises(UnknownKeyError, match="spatial"):
        neighbourhood_composition(a, NeighbourhoodParams(label_key="cell_type", cell_type="A"))


def test_merfish_oligodendrocytes_cluster_together(merfish):
    import anndata as ad

    a = ad.read_h5ad(merfish)
    r = neighbourhood_composition(a, NeighbourhoodParams(
        label_key="cell_class", cell_type="OD Mature 2", radius=30, section_key="bregma",
        n_perms=100))
    rows = {x.label: x for x in r.rows}
    assert r.rows[0].label == "OD Mature 2"          # strongest: their own kind (fibre tracts)
    assert rows["OD Mature 2"].ratio > 2 and rows["OD Mature 2"].zscore > 10
    assert rows["Inhibitory"].ratio < 1 and rows["Inhibitory"].zscore < 0


def test_osmfish_layer6_holds_l6_pyramidal_cells(osmfish):
    import anndata as ad

    a = ad.read_h5ad(osmfish)
    r = region_composition(a, RegionParams(label_key="cell_type", region_key="region",
                                           region="Layer 6"))
    assert r.rows[0].label == "Pyramidal L6" and r.rows[0].ratio > 3
