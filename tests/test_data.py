"""tools.data: reading (h5ad, Visium folder, tables), validation errors and preprocessing."""
import hashlib
import json

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from tools.data import (LoadParams, PreprocessParams, has_counts, load_data, matrix_stats,
                        preprocess, read_dataset, validate)
from tools.errors import DataError, ParameterError
from tools.registry import REGISTRY
from tools.simulate import simulate_tissue


def sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture(scope="module")
def small():
    return simulate_tissue(seed=3, n_rows=12, n_cols=12)


def _write(adata, path):
    adata.write_h5ad(path)
    return str(path)


# ------------------------------------------------------------------ bad inputs
def _no_coords(a):
    del a.obsm["spatial"]
    del a.obs["array_row"], a.obs["array_col"]


def _nan(a):
    a.X = a.X.toarray()
    a.X[0, 0] = np.nan


def _inf(a):
    a.X.data[3] = np.inf


def _negative(a):
    a.X = a.X.toarray()
    a.X[1, :4] = -1


def _dup_genes(a):
    a.var_names = ["RELN"] * 2 + list(a.var_names[2:])


def _dup_spots(a):
    a.obs_names = ["s1"] * 3 + list(a.obs_names[3:])


def _bad_coords(a):
    a.obsm["spatial"][[0, 5], 1] = np.nan


BAD = [
    (_no_coords, "no spatial coordinates"),
    (_nan, "1 NaN/inf values"),
    (_inf, "1 NaN/inf values"),
    (_negative, "4 negative values"),
    (_dup_genes, "duplicate gene names: RELN"),
    (_dup_spots, "duplicate spot names: s1"),
    (_bad_coords, "2 of"),
]


@pytest.mark.filterwarnings("ignore:.*names are not unique")
@pytest.mark.parametrize("breaker,message", BAD, ids=[b[0].__name__ for b in BAD])
def test_bad_input_gives_one_line_data_error(small, tmp_path, breaker, message):
    a = small.copy()
    breaker(a)
    path = _write(a, tmp_path / "bad.h5ad")
    with pytest.raises(DataError) as e:
        load_data(LoadParams(path=path))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_empty_and_unreadable_and_unknown(small, tmp_path):
    empty = _write(small[:0].copy(), tmp_path / "empty.h5ad")
    with pytest.raises(DataError, match="empty"):
        load_data(LoadParams(path=empty))
    junk = tmp_path / "junk.h5ad"
    junk.write_bytes(b"this is not hdf5")
    with pytest.raises(DataError, match="cannot read junk.h5ad") as e:
        read_dataset(junk)
    assert "\n" not in str(e.value)
    other = tmp_path / "counts.xlsx"
    other.write_bytes(b"PK")
    with pytest.raises(DataError, match=r"unknown format for counts.xlsx \(suffix '.xlsx'\)"):
        read_dataset(other)
    with pytest.raises(DataError, match="file not found"):
        read_dataset(tmp_path / "missing.h5ad")
    with pytest.raises(DataError, match="is not a 10x Visium folder"):
        read_dataset(tmp_path)


def test_coordinates_found_in_obs_columns(small):
    a = small.copy()
    xy = a.obsm.pop("spatial")
    a.obs["x"], a.obs["y"] = xy[:, 0], xy[:, 1]
    notes = validate(a)
    assert notes == ["coordinates taken from obs['x'], obs['y']"]
    np.testing.assert_allclose(a.obsm["spatial"], xy)
    b = small.copy()
    del b.obsm["spatial"]  # Visium array indices are the fallback
    validate(b)
    np.testing.assert_array_equal(b.obsm["spatial"][:, 0], small.obs["array_col"])


def test_counts_checks_sparse_and_dense(small):
    X = small.X.copy()
    X.data[:5] = 0.5
    X.data[5] = -2
    for m in (X, X.toarray()):
        assert matrix_stats(m) == {"nonfinite": 0, "negative": 1, "noninteger": 5}
    log = small.copy()
    log.X = np.log1p(log.X.toarray()) - 1  # scaled / log data: fine when counts not expected
    validate(log, expect_counts=False)
    assert not has_counts(log) and has_counts(small)
    with pytest.raises(DataError, match="negative values; raw counts expected"):
        validate(log)


# ------------------------------------------------------------------ tables
def test_single_csv_with_coords_and_metadata(small, tmp_path):
    genes = list(small.var_names[:20])
    df = pd.DataFrame(small[:, genes].X.toarray(), columns=genes)
    df.insert(0, "cell_id", small.obs_names)
    df["x"], df["y"] = small.obsm["spatial"][:, 0], small.obsm["spatial"][:, 1]
    df["region"] = small.obs["ground_truth"].astype(str).to_numpy()
    path = tmp_path / "cells.csv"
    df.to_csv(path, index=False)
    before = sha(path)
    a, res = load_data(LoadParams(path=str(path), name="cells"))
    assert sha(path) == before
    assert (res.dataset, res.n_spots, res.n_genes, res.has_counts) == ("cells", small.n_obs, 20, True)
    assert list(a.var_names) == genes and "region" in a.obs and "x" in a.obs
    np.testing.assert_allclose(a.obsm["spatial"], small.obsm["spatial"])
    np.testing.assert_array_equal(a.X.toarray(), small[:, genes].X.toarray())
    assert res.x_range[0] == pytest.approx(small.obsm["spatial"][:, 0].min())


def test_counts_table_plus_coords_table(small, tmp_path):
    counts = pd.DataFrame(small.X.toarray(), index=small.obs_names, columns=small.var_names)
    counts.to_csv(tmp_path / "counts.tsv", sep="\t")
    coords = pd.DataFrame(small.obsm["spatial"], index=small.obs_names, columns=["x", "y"])
    coords.iloc[::-1].to_csv(tmp_path / "coords.csv", index_label="barcode")  # other row order
    a, res = load_data(LoadParams(path=str(tmp_path / "counts.tsv"),
                                  coords=str(tmp_path / "coords.csv")))
    assert res.n_genes == small.n_vars
    np.testing.assert_allclose(a.obsm["spatial"], small.obsm["spatial"])
    coords.iloc[2:].to_csv(tmp_path / "coords.csv", index_label="barcode")
    with pytest.raises(DataError, match="2 of .* have no row in coords.csv"):
        read_dataset(tmp_path / "counts.tsv", coords=tmp_path / "coords.csv")
    pd.concat([coords, coords.iloc[:1]]).to_csv(tmp_path / "coords.csv", index_label="barcode")
    with pytest.raises(DataError, match="1 duplicate spot ids in coords.csv"):
        read_dataset(tmp_path / "counts.tsv", coords=tmp_path / "coords.csv")
    with pytest.raises(DataError, match="only used with a counts table"):
        read_dataset(_write(small, tmp_path / "s.h5ad"), coords=tmp_path / "coords.csv")


# ------------------------------------------------------------------ Visium folder
def _write_10x_h5(path, adata, library_id="lib1"):
    m = sparse.csr_matrix(adata.X).astype(np.int32)  # spots x genes = 10x CSC genes x spots
    with h5py.File(path, "w") as f:
        f.attrs["library_ids"] = np.array([library_id.encode()])
        g = f.create_group("matrix")
        g["barcodes"] = np.array(adata.obs_names, dtype="S")
        g["data"], g["indices"], g["indptr"] = m.data, m.indices.astype(np.int64), m.indptr
        g["shape"] = np.array([adata.n_vars, adata.n_obs], dtype=np.int32)
        feat = g.create_group("features")
        feat["id"] = np.array([f"ENSG{i:011d}" for i in range(adata.n_vars)], dtype="S")
        feat["name"] = np.array(adata.var_names, dtype="S")
        feat["feature_type"] = np.array([b"Gene Expression"] * adata.n_vars)
        feat["genome"] = np.array([b"GRCh38"] * adata.n_vars)


def _visium_folder(root, adata, header: bool):
    (root / "spatial").mkdir(parents=True)
    _write_10x_h5(root / "filtered_feature_bc_matrix.h5", adata)
    xy = adata.obsm["spatial"]
    pos = pd.DataFrame({"barcode": adata.obs_names, "in_tissue": 1,
                        "array_row": adata.obs["array_row"], "array_col": adata.obs["array_col"],
                        "pxl_row_in_fullres": xy[:, 1].round().astype(int),
                        "pxl_col_in_fullres": xy[:, 0].round().astype(int)})
    pos = pos.iloc[::-1]  # positions file order differs from the matrix
    name = "tissue_positions.csv" if header else "tissue_positions_list.csv"
    pos.to_csv(root / "spatial" / name, index=False, header=header)


@pytest.mark.parametrize("header", [True, False], ids=["tissue_positions", "positions_list"])
def test_visium_folder(small, tmp_path, header):
    root = tmp_path / "visium"
    _visium_folder(root, small, header)
    before = sha(root / "filtered_feature_bc_matrix.h5")
    a, res = load_data(LoadParams(path=str(root)))
    assert sha(root / "filtered_feature_bc_matrix.h5") == before
    assert (res.n_spots, res.n_genes, res.has_counts) == (small.n_obs, small.n_vars, True)
    np.testing.assert_array_equal(a.X.toarray(), small.X.toarray())
    np.testing.assert_allclose(a.obsm["spatial"], small.obsm["spatial"].round())
    np.testing.assert_array_equal(a.obs["array_row"], small.obs["array_row"])
    assert "lib1" in a.uns["spatial"]


def test_visium_folder_with_images_uses_squidpy(small, tmp_path):
    import matplotlib.image

    root = tmp_path / "visium"
    _visium_folder(root, small, header=True)
    for res, side in (("hires", 40), ("lowres", 20)):
        matplotlib.image.imsave(root / "spatial" / f"tissue_{res}_image.png",
                                np.random.default_rng(0).random((side, side, 3)))
    (root / "spatial" / "scalefactors_json.json").write_text(json.dumps(
        {"tissue_hires_scalef": 0.008, "tissue_lowres_scalef": 0.004,
         "spot_diameter_fullres": 90.0, "fiducial_diameter_fullres": 140.0}))
    a = read_dataset(root)
    assert a.uns["spatial"]["lib1"]["images"]["hires"].shape[:2] == (40, 40)
    assert a.uns["spatial"]["lib1"]["scalefactors"]["spot_diameter_fullres"] == 90.0
    np.testing.assert_allclose(a.obsm["spatial"], small.obsm["spatial"].round())
    assert validate(a) == []


def test_visium_folder_without_positions(small, tmp_path):
    root = tmp_path / "visium"
    _visium_folder(root, small, header=True)
    (root / "spatial" / "tissue_positions.csv").unlink()
    with pytest.raises(DataError, match="no tissue_positions.csv"):
        read_dataset(root)


# ------------------------------------------------------------------ preprocess
def test_preprocess_small_dense_is_idempotent_and_survives_h5ad(small, tmp_path):
    a = small.copy()
    a.X = a.X.toarray()
    r = preprocess(a, PreprocessParams(n_top_genes=100, n_comps=10, min_counts=0))
    assert (r.n_hvg, r.n_comps, r.already_done) == (100, 10, False)
    assert a.obsm["X_pca"].shape == (a.n_obs, 10)
    assert a.var["highly_variable"].sum() == 100
    X = a.X.toarray()
    assert preprocess(a, PreprocessParams(n_top_genes=100, n_comps=10, min_counts=0)).already_done
    np.testing.assert_array_equal(a.X.toarray(), X)  # not logged twice
    b = ad.read_h5ad(_write(a, tmp_path / "pp.h5ad"))
    assert preprocess(b, PreprocessParams(n_top_genes=100, n_comps=10, min_counts=0)).already_done
    r2 = preprocess(b, PreprocessParams(n_top_genes=50, n_comps=10, min_counts=0))
    assert (r2.n_hvg, r2.already_done) == (50, False)
    np.testing.assert_allclose(b.X.toarray(), X, rtol=1e-5)  # restarted from counts, same log data


def test_preprocess_errors(small):
    import scanpy as sc

    with pytest.raises(DataError, match="lower the thresholds"):
        preprocess(small.copy(), PreprocessParams(min_counts=10**6))
    logged = small.copy()
    sc.pp.log1p(logged)
    with pytest.raises(DataError, match="already log-transformed"):
        preprocess(logged, PreprocessParams())
    import importlib.util

    if importlib.util.find_spec("skmisc") is None:
        with pytest.raises(ParameterError, match="scikit-misc"):
            preprocess(small.copy(), PreprocessParams(hvg_flavor="seurat_v3"))


def test_tools_registered():
    tools = REGISTRY  # tools.data is imported above; other modules may not exist yet
    assert tools["load_data"].needs_data is False and tools["load_data"].params is LoadParams
    assert tools["preprocess"].needs_data is True
    assert "dataset" in tools["preprocess"].params.model_json_schema()["properties"]


def test_real_dlpfc_fixture_load_and_preprocess(dlpfc_hvg300):
    before = sha(dlpfc_hvg300)
    a, res = load_data(LoadParams(path=str(dlpfc_hvg300), name="dlpfc"))
    assert (res.n_spots, res.n_genes, res.has_counts) == (3639, 300, True)
    assert "ground_truth" in res.obs_columns
    r = preprocess(a, PreprocessParams())
    assert sha(dlpfc_hvg300) == before
    assert r.n_spots == a.n_obs == 3639 - r.n_filtered_spots and r.n_filtered_spots < 50
    assert r.n_genes == a.n_vars == 300 - r.n_filtered_genes
    assert r.n_hvg == a.n_vars  # 2000 requested, fewer genes available: all are HVG
    assert a.obsm["X_pca"].shape == (a.n_obs, 30) and 0 < r.variance_explained < 1
    counts = a.layers["counts"]
    assert matrix_stats(counts)["noninteger"] == 0
    orig = ad.read_h5ad(dlpfc_hvg300)[a.obs_names, a.var_names]
    assert (counts != orig.X).nnz == 0  # raw counts of the kept spots and genes
    # .X is log1p of counts scaled to 1e4 per spot
    np.testing.assert_allclose(np.expm1(a.X.toarray()).sum(1), 1e4, rtol=1e-3)
    assert np.asarray(a.obs["total_counts"] >= 10).all()
    r100 = preprocess(a, PreprocessParams(n_top_genes=100))
    assert r100.n_hvg == 100 and a.var["highly_variable"].sum() == 100


@pytest.mark.slow
def test_real_dlpfc_full_preprocess(dlpfc_full):
    a, res = load_data(LoadParams(path=str(dlpfc_full)))
    r = preprocess(a, PreprocessParams())
    assert (res.n_genes, r.n_hvg, r.n_comps) == (5000, 2000, 30)
    assert a.obsm["X_pca"].shape == (r.n_spots, 30) and a.layers["counts"].shape == a.shape
