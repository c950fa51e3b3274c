"""`tissuetalk domains`: bad input gives one `error: ...` line, a non-zero exit and an untouched
input file; success writes a new h5ad + figures and prints one JSON object."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from agent.cli import main

REPO = Path(__file__).resolve().parents[1]


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def counts_adata(n_spots: int = 30, n_genes: int = 20, seed: int = 0):
    import anndata as ad
    import pandas as pd
    from scipy import sparse

    rng = np.random.default_rng(seed)
    a = ad.AnnData(sparse.csr_matrix(rng.poisson(3.0, (n_spots, n_genes)).astype(np.float32)))
    a.obs_names = [f"spot{i}" for i in range(n_spots)]
    a.var_names = [f"G{i}" for i in range(n_genes)]
    a.obsm["spatial"] = rng.uniform(0, 100, (n_spots, 2))
    a.obs["ground_truth"] = pd.Categorical(rng.choice(["A", "B"], n_spots))
    return a


def write(a, path: Path) -> Path:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names warn
        a.write_h5ad(path)
    return path


def _missing_coords(a):
    del a.obsm["spatial"]


def _nan(a):
    a.X = a.X.toarray()
    a.X[2, 3] = np.nan


def _inf(a):
    a.X.data[5] = np.inf


def _negative(a):
    a.X.data[:4] = -1


def _duplicate_genes(a):
    a.var_names = ["G0", "G1"] + [f"G{i}" for i in range(1, a.n_vars - 1)]


BAD_DATA = {
    "missing coordinates": (_missing_coords, [], "no spatial coordinates"),
    "NaN counts": (_nan, [], "1 NaN/inf values"),
    "inf counts": (_inf, [], "1 NaN/inf values"),
    "negative counts": (_negative, [], "4 negative values"),
    "duplicate gene names": (_duplicate_genes, [], "duplicate gene names: G1"),
    "n-domains < 2": (None, ["--n-domains", "1"], "--n-domains"),
    "n-domains > spots": (None, ["--n-domains", "31"], "--n-domains 31 is more than the 30 spots"),
    "unknown label key": (None, ["--label-key", "ground_truht"],
                          "--label-key 'ground_truht' is not an obs column"),
    "all-NaN label key": ("all_nan", ["--label-key", "empty"], "'empty' has no labelled spots"),
    "rag without descriptions": (None, ["--prompt", "rag"], "--prompt rag needs --descriptions"),
    "missing descriptions file": (None, ["--prompt", "rag", "--descriptions", "/nonexistent.tsv"],
                                  "descriptions file not found: /nonexistent.tsv"),
    "descriptions without rag": (None, ["--descriptions", "x.tsv"],
                                 "--descriptions is only used with --prompt rag"),
    "text weight > 1": (None, ["--text-weight", "1.5"], "--text-weight"),
}


def run_cli(argv, capsys):
    rc = main(["domains", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(rc, out, err, fragment: str):
    assert rc != 0
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert fragment in lines[0], lines[0]
    assert "Traceback" not in err and out == ""


@pytest.mark.parametrize("case", list(BAD_DATA))
def test_bad_input_is_one_line_error_and_input_unchanged(case, tmp_path, capsys):
    mutate, extra, fragment = BAD_DATA[case]
    a = counts_adata()
    if mutate == "all_nan":
        a.obs["empty"] = np.nan
    elif mutate is not None:
        mutate(a)
    src = write(a, tmp_path / "input.h5ad")
    before, mtime = sha(src), src.stat().st_mtime_ns
    out_dir = tmp_path / "out"
    rc, out, err = run_cli(["--data", src, "--out", out_dir, "--json", *extra], capsys)
    assert_one_line_error(rc, out, err, fragment)
    assert sha(src) == before and src.stat().st_mtime_ns == mtime
    assert not (out_dir / "domains.h5ad").exists()


@pytest.mark.parametrize("content,fragment", [
    (b"this is not an HDF5 file\n" * 10, "cannot read input.h5ad as .h5ad"),
    (b"", "cannot read input.h5ad as .h5ad"),
])
def test_corrupt_file_is_one_line_error(content, fragment, tmp_path, capsys):
    src = tmp_path / "input.h5ad"
    src.write_bytes(content)
    before = sha(src)
    rc, out, err = run_cli(["--data", src, "--out", tmp_path / "out"], capsys)
    assert_one_line_error(rc, out, err, fragment)
    assert sha(src) == before


def test_truncated_h5ad_is_one_line_error(tmp_path, capsys):
    good = write(counts_adata(), tmp_path / "good.h5ad").read_bytes()
    src = tmp_path / "input.h5ad"
    src.write_bytes(good[: len(good) // 2])
    rc, out, err = run_cli(["--data", src, "--out", tmp_path / "out"], capsys)
    assert_one_line_error(rc, out, err, "cannot read input.h5ad")


def test_missing_file_and_unknown_format(tmp_path, capsys):
    rc, out, err = run_cli(["--data", tmp_path / "nope.h5ad", "--out", tmp_path / "o"], capsys)
    assert_one_line_error(rc, out, err, "file not found")
    odd = tmp_path / "data.xlsx"
    odd.write_bytes(b"PK")
    rc, out, err = run_cli(["--data", odd, "--out", tmp_path / "o"], capsys)
    assert_one_line_error(rc, out, err, "unknown format")


def test_output_never_overwrites_the_input(tmp_path, capsys):
    src = write(counts_adata(), tmp_path / "domains.h5ad")
    before = sha(src)
    rc, out, err = run_cli(["--data", src, "--out", tmp_path], capsys)
    assert_one_line_error(rc, out, err, "would overwrite the input file")
    assert sha(src) == before


@pytest.fixture(scope="module")
def sim_h5ad(tmp_path_factory):
    from tools.simulate import simulate_tissue

    path = tmp_path_factory.mktemp("sim") / "tissue.h5ad"
    simulate_tissue(seed=0, n_rows=14, n_cols=16).write_h5ad(path)
    return path


def check_success(js: dict, sim_h5ad: Path, out_dir: Path, before: str) -> None:
    for k in ("ari", "ami", "nmi", "n_spots", "method", "seconds", "stages"):
        assert k in js
    assert 0.1 < js["ari"] <= 1 and 0 < js["nmi"] <= 1 and js["cache"] == "miss"
    assert js["method"] == "gmm-tied/smooth2/hmrf-beta2"
    assert {"load", "preprocess", "graph", "domains", "plot_spatial", "plot_umap",
            "write"} <= set(js["stages"])
    assert sha(sim_h5ad) == before
    names = sorted(p.name for p in out_dir.iterdir())
    assert names == ["domains.h5ad", "spatial_domains.png", "umap.png"]
    import anndata as ad

    res = ad.read_h5ad(out_dir / "domains.h5ad")
    assert res.n_obs == js["n_spots"] and "domain" in res.obs and "X_pca" in res.obsm
    assert res.uns["domain"]["ari"] == pytest.approx(js["ari"])


def test_success_prints_one_json_object_and_writes_new_files(sim_h5ad, tmp_path, capsys,
                                                             monkeypatch):
    """Cold run (stdout must be exactly the JSON object even though squidpy logs to stdout),
    then a warm run that restores the cached expression stage and skips the UMAP."""
    monkeypatch.setenv("TISSUETALK_CACHE", str(tmp_path / "cache"))
    before = sha(sim_h5ad)
    args = ["--data", sim_h5ad, "--n-domains", "7", "--label-key", "ground_truth", "--json"]
    rc, out, err = run_cli([*args, "--out", tmp_path / "out"], capsys)
    assert rc == 0, err
    assert out.count("\n") == 1 and out.endswith("}\n"), out
    js = json.loads(out)
    check_success(js, sim_h5ad, tmp_path / "out", before)

    rc, out, err = run_cli([*args, "--out", tmp_path / "out2", "--no-umap"], capsys)
    assert rc == 0, err
    warm = json.loads(out)
    assert warm["cache"] == "hit" and warm["ari"] == js["ari"]
    assert "preprocess" not in warm["stages"] and "plot_umap" not in warm["stages"]
    assert sorted(p.name for p in (tmp_path / "out2").iterdir()) == [
        "domains.h5ad", "spatial_domains.png"]
    assert sha(sim_h5ad) == before


@pytest.mark.slow
def test_success_as_a_real_subprocess(sim_h5ad, tmp_path):
    """The installed command in a fresh process: stdout is one JSON line."""
    before = sha(sim_h5ad)
    out_dir = tmp_path / "out"
    env = {**os.environ, "TISSUETALK_CACHE": str(tmp_path / "cache")}
    exe = Path(sys.executable).parent / "tissuetalk"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "agent.cli"]
    r = subprocess.run(cmd + ["domains", "--data", str(sim_h5ad), "--n-domains", "7",
                              "--label-key", "ground_truth", "--out", str(out_dir), "--json"],
                       capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("\n") == 1 and r.stdout.endswith("}\n"), r.stdout
    check_success(json.loads(r.stdout), sim_h5ad, out_dir, before)
