"""Neighbourhood and genetic perturbation with the context model."""
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_generation import tissue  # noqa: E402

from tools.errors import DataError, ParameterError, UnknownKeyError  # noqa: E402
from tools.perturbation import (KnockoutParams, NeighbourhoodParams, de_table,  # noqa: E402
                                knockout_gene, perturb_neighbourhood)


@pytest.fixture(scope="module")
def adata():
    a = tissue(500, sections=("s1",))
    # one isolated B cell far from the rest: no cell has it in its context
    a.obsm["spatial"][0] = (5000.0, 5000.0)
    a.obs.loc["c0", "cell_class"] = "B"
    a.X[0, 1] = 5.0
    return a


def test_de_table_columns_and_ranks():
    ctrl = np.log1p(np.array([[1.0, 3.0], [1.0, 1.0]]))
    pert = np.log1p(np.array([[3.0, 3.0], [3.0, 1.0]]))
    df = de_table(ctrl, pert, ["Aa", "Bb"])
    assert list(df.columns) == ["gene", "log_fold_change", "difference", "control", "perturbed", "rank"]
    assert list(df["gene"]) == ["Aa", "Bb"] and list(df["rank"]) == [1, 2]
    assert df.loc[0, "log_fold_change"] == pytest.approx(1.0) and df.loc[0, "difference"] == pytest.approx(2.0)
    assert df.loc[1, "log_fold_change"] == 0


@pytest.mark.parametrize("action,sign", [("remove", -1), ("add", 1), ("transplant", 1)])
def test_neighbourhood_perturbation_moves_the_responding_gene(adata, action, sign):
    a = adata.copy()
    p = NeighbourhoodParams(target_type="A", perturb_type="B", action=action, n_cells=4, radius=60)
    r = perturb_neighbourhood(a, p)
    name = r.key.split("/", 1)[1]
    df = a.uns["de"][name].set_index("gene")
    assert sign * df.loc["Penk", "log_fold_change"] > 0.1
    top = r.top_up if sign > 0 else r.top_down
    assert top[0].gene == "Penk"
    assert r.n_targets == (a.obs["cell_class"] == "A").sum()
    assert a.uns["perturbation"][name]["action"] == action


def test_knockout_lowers_the_response_of_neighbours_only(adata):
    a = adata.copy()
    b = np.flatnonzero((a.obs["cell_class"] == "B").to_numpy())[1:]
    cell = a.obs_names[b[np.argmax(a.X[b, 1])]]
    r = knockout_gene(a, KnockoutParams(cell=cell, gene="cbln2"))  # case-insensitive gene name
    info = a.uns["perturbation"][r.key.split("/", 1)[1]]
    assert info["gene"] == "Cbln2" and cell not in info["responders"] and len(info["responders"]) >= 1
    assert r.top_down[0].gene == "Penk" and r.top_down[0].log_fold_change < 0
    half = knockout_gene(a, KnockoutParams(cell=cell, gene="Cbln2", mode="knockdown", factor=0.5))
    assert r.top_down[0].log_fold_change < half.top_down[0].log_fold_change < 0


def test_bad_perturbation_inputs_are_named(adata):
    a = adata.copy()
    with pytest.raises(UnknownKeyError, match="cell type 'Bb' not found"):
        perturb_neighbourhood(a, NeighbourhoodParams(target_type="A", perturb_type="Bb", action="add"))
    with pytest.raises(ParameterError, match="nothing to remove"):
        perturb_neighbourhood(a, NeighbourhoodParams(target_type="A", perturb_type="B",
                                                     action="remove", radius=0.001))
    with pytest.raises(UnknownKeyError, match="did you mean: Penk"):
        knockout_gene(a, KnockoutParams(cell="c5", gene="Penkk"))
    a_cell = a.obs_names[(a.obs["cell_class"] == "A").to_numpy()][0]
    with pytest.raises(ParameterError, match="not expressed"):
        knockout_gene(a, KnockoutParams(cell=a_cell, gene="Cbln2"))
    with pytest.raises(DataError, match="empty neighbourhood"):
        knockout_gene(a, KnockoutParams(cell="c0", gene="Cbln2"))


def test_perturbation_table_goes_to_gsea_prerank(adata, tmp_path):
    a = adata.copy()
    gmt = tmp_path / "sets.gmt"
    gmt.write_text("RESPONSE\tna\tPenk\tCbln2\tGad1\tGja1\tMlc1\n"
                   "OLIGO\tna\tOlig2\tPlp1\tSgk1\tSox10\tMbp\n")
    r = perturb_neighbourhood(a, NeighbourhoodParams(target_type="A", perturb_type="B", action="add",
                                                     gene_sets=str(gmt)))
    assert set(r.gsea_top_terms) == {"RESPONSE", "OLIGO"}
