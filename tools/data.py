"""Loading, validating and preprocessing spatial data (tools `load_data` and `preprocess`).

Keys written: ``obsm['spatial']`` (coordinates), ``layers['counts']`` (raw counts), ``.X``
(log-normalised), ``var['highly_variable']``, ``obsm['X_pca']``, ``uns['tissuetalk_preprocess']``.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import BaseModel, Field

from tools.errors import DataError, ParameterError
from tools.registry import register

if TYPE_CHECKING:
    from anndata import AnnData

PREPROCESS_KEY = "tissuetalk_preprocess"
_TABLE_SUFFIXES = (".csv", ".tsv", ".txt", ".csv.gz", ".tsv.gz", ".txt.gz")
# (x, y) column pairs accepted as coordinates, in order of preference
_COORD_COLUMNS = (
    ("x", "y"), ("X", "Y"), ("x_centroid", "y_centroid"), ("center_x", "center_y"),
    ("centroid_x", "centroid_y"), ("imagecol", "imagerow"), ("sdimx", "sdimy"),
    ("pxl_col_in_fullres", "pxl_row_in_fullres"), ("array_col", "array_row"),
)
_COORD_OBSM = ("X_spatial", "spatial_coords", "coordinates", "coords", "xy", "X_xy")
_ID_COLUMNS = ("cell_id", "cell", "spot_id", "spot", "barcode", "barcodes", "id")


# ---------------------------------------------------------------- reading
def read_dataset(path: str | Path, coords: str | Path | None = None) -> AnnData:
    """Read a spatial dataset into AnnData; the input files are only read.

    Accepted formats:

    - ``.h5ad``: AnnData as written by anndata/scanpy.
    - a 10x Visium (Space Ranger) folder: ``filtered_feature_bc_matrix.h5`` (or
      ``raw_feature_bc_matrix.h5``) and ``spatial/tissue_positions.csv`` (with header) or the older
      headerless ``spatial/tissue_positions_list.csv``. With ``scalefactors_json.json`` and both
      tissue images present it is read by ``squidpy.read.visium`` (images kept in ``uns['spatial']``);
      otherwise counts by ``scanpy.read_10x_h5`` and the positions joined by barcode.
      ``obsm['spatial']`` = full-resolution pixel (x, y); ``obs`` gets in_tissue/array_row/array_col.
    - a table (``.csv``/``.tsv``/``.txt``, optionally ``.gz``), one row per spot: an id column
      (first column, or one named cell_id/cell/spot_id/spot/barcode/id), coordinate columns
      (``x``/``y`` or another pair accepted by :func:`validate`) and one numeric column per gene;
      non-numeric columns become ``obs`` metadata.
    - a counts table (spots x genes, id in the first column) plus ``coords``: a second table with
      the same ids and the coordinate columns; spots are matched by id.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"file not found: {path}")
    name = path.name.lower()
    if coords is not None and (path.is_dir() or not name.endswith(_TABLE_SUFFIXES)):
        raise DataError("a separate coordinates file is only used with a counts table (.csv/.tsv)")
    if path.is_dir():
        adata = _read_visium(path)
    elif name.endswith(".h5ad"):
        adata = _read_h5ad(path)
    elif name.endswith(_TABLE_SUFFIXES):
        adata = _read_table(path, coords)
    else:
        raise DataError(
            f"unknown format for {path.name} (suffix '{''.join(path.suffixes) or 'none'}'); "
            "expected .h5ad, a 10x Visium folder, or a .csv/.tsv table"
        )
    return adata


def _read_h5ad(path: Path) -> AnnData:
    import anndata as ad

    try:
        adata = ad.read_h5ad(path)
    except Exception as e:  # h5py/anndata raise many kinds
        raise DataError(f"cannot read {path.name} as .h5ad: {_reason(e)}") from None
    if adata.X is None:
        raise DataError(f"{path.name} has no expression matrix (.X is empty)")
    return adata


def _reason(e: Exception) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0] if msg else ''}".rstrip(": ")


def _sep(path: Path) -> str:
    return "," if ".csv" in path.name.lower() else "\t"


def _read_frame(path: Path):
    import pandas as pd

    try:
        df = pd.read_csv(path, sep=_sep(path))
    except FileNotFoundError:
        raise DataError(f"file not found: {path}") from None
    except Exception as e:
        raise DataError(f"cannot read {path.name} as a table: {_reason(e)}") from None
    if df.shape[0] == 0 or df.shape[1] < 2:
        raise DataError(f"{path.name} is empty or has a single column (is the separator right?)")
    idcol = next((c for c in df.columns if str(c).lower() in _ID_COLUMNS), df.columns[0])
    df = df.set_index(idcol)
    df.index = df.index.astype(str)
    df.index.name = None
    return df


def _read_table(path: Path, coords: str | Path | None) -> AnnData:
    import anndata as ad
    import pandas as pd
    from scipy import sparse

    df = _read_frame(path)
    obs = pd.DataFrame(index=df.index)
    if coords is not None:
        cdf = _read_frame(Path(coords))
        if cdf.index.has_duplicates:
            dup = cdf.index[cdf.index.duplicated()]
            raise DataError(f"{len(dup)} duplicate spot ids in {Path(coords).name}: {_few(dup)}")
        missing = df.index.difference(cdf.index)
        if len(missing):
            raise DataError(
                f"{len(missing)} of {len(df)} spots in {path.name} have no row in "
                f"{Path(coords).name} (e.g. {', '.join(missing[:3])})"
            )
        obs = cdf.loc[df.index]
    numeric = [c for c in df.columns if pd.api.types.is_numeric_dtype(df[c])]
    if coords is None:
        pair = next((p for p in _COORD_COLUMNS if set(p) <= set(df.columns)), ())
        meta = [c for c in df.columns if c not in numeric or c in pair
                or c in ("array_row", "array_col", "in_tissue")]
        obs = df[meta]
        numeric = [c for c in numeric if c not in meta]
    if not numeric:
        raise DataError(f"{path.name} has no numeric gene columns")
    X = sparse.csr_matrix(df[numeric].to_numpy(dtype=np.float32))
    adata = ad.AnnData(X=X, obs=obs.copy(), var=pd.DataFrame(index=[str(c) for c in numeric]))
    return adata


def _read_visium(path: Path) -> AnnData:
    import h5py

    h5 = next((path / f for f in ("filtered_feature_bc_matrix.h5", "raw_feature_bc_matrix.h5")
               if (path / f).exists()), None)
    if h5 is None:
        raise DataError(
            f"{path.name}/ is not a 10x Visium folder: no filtered_feature_bc_matrix.h5 in it"
        )
    spatial = path / "spatial"
    pos = next((spatial / f for f in ("tissue_positions.csv", "tissue_positions_list.csv")
                if (spatial / f).exists()), None)
    if pos is None:
        raise DataError(f"{path.name}/spatial/ has no tissue_positions.csv or tissue_positions_list.csv")
    try:
        with h5py.File(h5, "r") as f:
            ids = f.attrs.get("library_ids")
        library_id = ids[0].decode() if ids is not None and isinstance(ids[0], bytes) else (
            str(ids[0]) if ids is not None else path.name)
        images = [spatial / f for f in ("scalefactors_json.json", "tissue_hires_image.png",
                                         "tissue_lowres_image.png")]
        if all(f.exists() for f in images):
            import squidpy as sq

            adata = sq.read.visium(path, counts_file=h5.name, library_id=library_id)
        else:
            adata = _read_10x_positions(h5, pos, library_id)
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"cannot read Visium folder {path.name}/: {_reason(e)}") from None
    adata.var_names_make_unique()
    return adata


def _read_10x_positions(h5: Path, pos: Path, library_id: str) -> AnnData:
    """Counts via scanpy.read_10x_h5; positions (either header style) joined by barcode."""
    import pandas as pd
    import scanpy as sc

    adata = sc.read_10x_h5(h5)
    with open(pos) as f:
        has_header = f.readline().split(",")[0].strip().lower() == "barcode"
    p = pd.read_csv(pos, header=0 if has_header else None, index_col=0)
    p.columns = ["in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres"]
    p.index = p.index.astype(str)
    p = p.reindex(adata.obs_names)
    for c in ("in_tissue", "array_row", "array_col"):
        adata.obs[c] = p[c].to_numpy()
    adata.obsm["spatial"] = p[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(float)
    adata.uns["spatial"] = {library_id: {"metadata": {}}}
    return adata


# ---------------------------------------------------------------- validation
def _chunks(X, size: int = 5_000_000):
    """Flat views of the stored values of X (sparse: .data; dense: ravel) in chunks."""
    from scipy import sparse

    vals = X.data if sparse.issparse(X) else np.asarray(X).ravel()
    for i in range(0, vals.size, size):
        yield vals[i:i + size]


def matrix_stats(X) -> dict[str, int | bool]:
    """Counts of non-finite, negative and non-integer stored values of X (sparse or dense)."""
    nonfinite = negative = nonint = 0
    for v in _chunks(X):
        fin = np.isfinite(v)
        nonfinite += int(v.size - fin.sum())
        negative += int((v < 0).sum())
        nonint += int((fin & (v != np.round(v))).sum())
    return {"nonfinite": nonfinite, "negative": negative, "noninteger": nonint}


def _few(names, n: int = 5) -> str:
    names = list(dict.fromkeys(map(str, names)))
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def _find_coords(adata) -> str | None:
    """Move coordinates found elsewhere into obsm['spatial']; return a note or None."""
    for key in _COORD_OBSM:
        if key in adata.obsm:
            adata.obsm["spatial"] = np.asarray(adata.obsm[key], dtype=float)
            return f"coordinates taken from obsm['{key}']"
    v = adata.uns.get("spatial")
    if v is not None and not isinstance(v, dict) and np.ndim(v) == 2 and len(v) == adata.n_obs:
        adata.obsm["spatial"] = np.asarray(v, dtype=float)
        return "coordinates taken from uns['spatial']"
    for pair in _COORD_COLUMNS:
        if set(pair) <= set(adata.obs.columns):
            try:
                xy = adata.obs[list(pair)].to_numpy(dtype=float)
            except (TypeError, ValueError):
                raise DataError(f"coordinate columns obs[{list(pair)}] are not numeric") from None
            adata.obsm["spatial"] = xy
            return f"coordinates taken from obs['{pair[0]}'], obs['{pair[1]}']"
    return None


def validate(adata: AnnData, expect_counts: bool = True) -> list[str]:
    """Check a dataset; raise DataError naming the first problem found.

    Coordinates found under another common key (obs x/y, array_row/array_col, obsm 'X_spatial' ...)
    are copied into ``obsm['spatial']`` (in memory only). With ``expect_counts`` the count matrix
    (``layers['counts']`` if present, else ``.X``) must have no negative values.
    Returns notes about such fixes (empty when nothing was changed).
    """
    notes: list[str] = []
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise DataError(f"the dataset is empty ({adata.n_obs} spots x {adata.n_vars} genes)")
    if adata.X is None:
        raise DataError("the dataset has no expression matrix (.X is empty)")
    dup = adata.obs_names[adata.obs_names.duplicated()]
    if len(dup):
        raise DataError(f"{len(dup)} duplicate spot names: {_few(dup)}")
    dup = adata.var_names[adata.var_names.duplicated()]
    if len(dup):
        raise DataError(f"{len(dup)} duplicate gene names: {_few(dup)} (use var_names_make_unique)")
    if "spatial" not in adata.obsm:
        note = _find_coords(adata)
        if note is None:
            raise DataError(
                "no spatial coordinates: expected obsm['spatial'] or obs columns x/y "
                "(or array_row/array_col)"
            )
        notes.append(note)
    xy = np.asarray(adata.obsm["spatial"])
    if xy.ndim != 2 or xy.shape[1] < 2:
        raise DataError(f"obsm['spatial'] must have 2 columns (x, y), it has shape {xy.shape}")
    try:
        bad = int((~np.isfinite(xy.astype(float))).any(axis=1).sum())
    except (TypeError, ValueError):
        raise DataError("obsm['spatial'] is not numeric") from None
    if bad:
        raise DataError(f"{bad} of {adata.n_obs} spots have non-finite (NaN/inf) coordinates")
    s = matrix_stats(adata.X)
    if s["nonfinite"]:
        raise DataError(f"the expression matrix has {s['nonfinite']} NaN/inf values")
    if expect_counts:
        if "counts" in adata.layers:
            s = matrix_stats(adata.layers["counts"])
            where = "layers['counts']"
        else:
            where = "the expression matrix"
        if s["nonfinite"]:
            raise DataError(f"{where} has {s['nonfinite']} NaN/inf values")
        if s["negative"]:
            raise DataError(f"{where} has {s['negative']} negative values; raw counts expected")
    return notes


def has_counts(adata: AnnData) -> bool:
    """True if layers['counts'] (or .X) holds non-negative integers."""
    X = adata.layers["counts"] if "counts" in adata.layers else adata.X
    s = matrix_stats(X)
    return not (s["nonfinite"] or s["negative"] or s["noninteger"])


# ---------------------------------------------------------------- load_data tool
class LoadParams(BaseModel):
    path: str = Field(description="path of an .h5ad file, a 10x Visium folder or a .csv/.tsv table")
    name: str = Field("data", pattern=r"^[A-Za-z0-9_.-]{1,64}$",
                      description="dataset id under which the data is kept in the session")
    coords: str | None = Field(None, description="coordinates table for a counts-only .csv/.tsv")
    expect_counts: bool = Field(True, description="require raw counts (no negative values)")


class LoadResult(BaseModel):
    dataset: str
    n_spots: int
    n_genes: int
    has_counts: bool = Field(description="expression (or layers['counts']) is non-negative integers")
    obs_columns: list[str]
    x_range: tuple[float, float]
    y_range: tuple[float, float]
    notes: list[str] = []


@register("load_data", LoadParams, LoadResult, needs_data=False,
          intents=("load", "read", "open", "import data", "h5ad", "visium"))
def load_data(p: LoadParams) -> tuple[AnnData, LoadResult]:
    """Read and validate a spatial dataset.

    Returns ``(adata, result)``: the agent stores ``adata`` in its workspace under ``p.name`` and
    shows the model only ``result``.
    """
    adata = read_dataset(p.path, p.coords)
    notes = validate(adata, expect_counts=p.expect_counts)
    xy = np.asarray(adata.obsm["spatial"], dtype=float)
    res = LoadResult(
        dataset=p.name, n_spots=adata.n_obs, n_genes=adata.n_vars, has_counts=has_counts(adata),
        obs_columns=[str(c) for c in adata.obs.columns[:30]],
        x_range=(float(xy[:, 0].min()), float(xy[:, 0].max())),
        y_range=(float(xy[:, 1].min()), float(xy[:, 1].max())), notes=notes,
    )
    return adata, res


# ---------------------------------------------------------------- preprocess tool
class PreprocessParams(BaseModel):
    dataset: str = Field("data", description="id of a loaded dataset")
    min_cells: int = Field(3, ge=0, le=10_000, description="drop genes detected in fewer spots")
    min_counts: int = Field(10, ge=0, le=1_000_000, description="drop spots with fewer total counts")
    target_sum: float | None = Field(1e4, gt=0, description="counts per spot after normalisation; "
                                     "None = median library size")
    n_top_genes: int = Field(2000, ge=10, le=50_000, description="number of highly variable genes")
    hvg_flavor: Literal["seurat", "cell_ranger", "seurat_v3"] = Field(
        "seurat", description="scanpy HVG method (seurat_v3 needs the scikit-misc package)")
    n_comps: int = Field(30, ge=2, le=200, description="number of principal components")
    max_value: float | None = Field(10.0, gt=0, description="clip scaled values before PCA")


class PreprocessResult(BaseModel):
    n_spots: int
    n_genes: int
    n_hvg: int
    n_filtered_spots: int = Field(description="spots removed by min_counts")
    n_filtered_genes: int = Field(description="genes removed by min_cells")
    n_comps: int
    variance_explained: float = Field(description="fraction of scaled-HVG variance in the PCs")
    already_done: bool = False


@register("preprocess", PreprocessParams, PreprocessResult,
          intents=("preprocess", "normalise", "normalize", "quality control", "qc", "pca",
                   "highly variable"))
def preprocess(adata: AnnData, p: PreprocessParams) -> PreprocessResult:
    """QC, filter, normalise, log1p, highly variable genes and PCA (scanpy), in place.

    Keeps raw counts in layers['counts']; .X becomes log-normalised (all genes); obsm['X_pca'] is
    the PCA of the scaled HVGs. Run again with the same parameters it does nothing; with other
    parameters it restarts from layers['counts'] (filters apply to the already-filtered data).
    """
    import scanpy as sc
    from scipy import sparse

    prev = adata.uns.get(PREPROCESS_KEY)
    if prev is not None:
        if dict(prev.get("params", {})) == _store(p):
            return PreprocessResult(**{**dict(prev["result"]), "already_done": True})
        adata.X = adata.layers["counts"].copy()
    elif "counts" in adata.layers:
        adata.X = adata.layers["counts"].copy()  # start from the raw counts the user kept
    elif "log1p" in adata.uns:
        raise DataError(".X is already log-transformed (uns['log1p']) and there is no "
                        "layers['counts'] to start from")
    s = matrix_stats(adata.X)
    if s["nonfinite"] or s["negative"]:
        raise DataError("preprocess needs non-negative finite counts in .X or layers['counts']")
    if p.hvg_flavor == "seurat_v3":
        import importlib.util

        if importlib.util.find_spec("skmisc") is None:
            raise ParameterError("hvg_flavor 'seurat_v3' needs the scikit-misc package; use 'seurat'")
    n0, g0 = adata.n_obs, adata.n_vars
    adata.X = sparse.csr_matrix(adata.X, dtype=np.float32)
    adata.var["mt"] = adata.var_names.str.upper().str.startswith("MT-")
    sc.pp.calculate_qc_metrics(adata, qc_vars=["mt"], percent_top=None, log1p=False, inplace=True)
    n_s = int((adata.obs["total_counts"] >= p.min_counts).sum())
    if n_s < 3 or int((adata.var["n_cells_by_counts"] >= p.min_cells).sum()) < 2:
        raise DataError(
            f"filtering (min_counts={p.min_counts}, min_cells={p.min_cells}) leaves {n_s} spots "
            "or too few genes; lower the thresholds"
        )
    sc.pp.filter_cells(adata, min_counts=p.min_counts)
    sc.pp.filter_genes(adata, min_cells=p.min_cells)
    if adata.n_vars < 2:
        raise DataError(f"filtering leaves {adata.n_vars} genes; lower min_cells or min_counts")
    adata.layers["counts"] = adata.X.copy()
    if p.hvg_flavor == "seurat_v3":
        sc.pp.highly_variable_genes(adata, n_top_genes=min(p.n_top_genes, adata.n_vars),
                                    flavor="seurat_v3", layer="counts")
    adata.uns.pop("log1p", None)
    sc.pp.normalize_total(adata, target_sum=p.target_sum)
    sc.pp.log1p(adata)
    if p.hvg_flavor != "seurat_v3":
        _hvg(adata, p)
    hvg = np.asarray(adata.var["highly_variable"])
    n_comps = min(p.n_comps, int(hvg.sum()) - 1, adata.n_obs - 1)
    if n_comps < 2:
        raise ParameterError(f"too few highly variable genes ({hvg.sum()}) for PCA")
    sub = adata[:, hvg].copy()
    sub.X = sub.X.toarray() if sparse.issparse(sub.X) else sub.X  # scaling densifies anyway
    sc.pp.scale(sub, max_value=p.max_value)
    # both exact; the covariance route is much faster for few genes and many spots
    solver = "covariance_eigh" if sub.n_vars <= 1000 and sub.n_obs >= sub.n_vars else "arpack"
    sc.pp.pca(sub, n_comps=n_comps, svd_solver=solver, random_state=0)
    adata.obsm["X_pca"] = sub.obsm["X_pca"]
    pcs = np.zeros((adata.n_vars, n_comps), dtype=sub.varm["PCs"].dtype)
    pcs[hvg] = sub.varm["PCs"]
    adata.varm["PCs"] = pcs
    adata.uns["pca"] = sub.uns["pca"]
    res = PreprocessResult(
        n_spots=adata.n_obs, n_genes=adata.n_vars, n_hvg=int(hvg.sum()),
        n_filtered_spots=n0 - adata.n_obs, n_filtered_genes=g0 - adata.n_vars, n_comps=n_comps,
        variance_explained=round(float(sub.uns["pca"]["variance_ratio"].sum()), 4),
    )
    adata.uns[PREPROCESS_KEY] = {"params": _store(p), "result": res.model_dump()}
    return res


def _store(p: PreprocessParams) -> dict:
    """Parameters as stored in uns (h5ad cannot hold None; dataset id is not a setting)."""
    d = p.model_dump(exclude={"dataset"})
    return {k: ("none" if v is None else v) for k, v in d.items()}


def _hvg(adata, p: PreprocessParams) -> None:
    import scanpy as sc

    if p.n_top_genes >= adata.n_vars:
        sc.pp.highly_variable_genes(adata, flavor=p.hvg_flavor, n_top_genes=adata.n_vars)
        adata.var["highly_variable"] = True
    else:
        sc.pp.highly_variable_genes(adata, flavor=p.hvg_flavor, n_top_genes=p.n_top_genes)
