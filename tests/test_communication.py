"""Ligand-receptor near vs far: planted signal, liana's bundled resource, bad input, MERFISH."""
import numpy as np
import pandas as pd
import pytest

from tools.communication import (LRParams, ligand_receptor, liana_resource_path,
                                 read_lr_pairs)
from tools.errors import DataError, ParameterError, UnknownKeyError

GENES = ["Lig1", "Lig2", "Rec1", "Rec2", "Rec3", "Rec4"] + [f"Filler{i}" for i in range(10)]


def tissue(seed=0, two_sections=False):
    """30x30 grid (10 µm); a 4x4 block of Endo cells; receivers within 20 µm of it have high
    Rec1, Rec3 and Rec4; Rec2 is uniform. Endo expresses Lig1 and Lig2."""
    import anndata as ad

    rng = np.random.default_rng(seed)
    xs, ys = np.meshgrid(np.arange(30) * 10.0, np.arange(30) * 10.0)
    xy = np.c_[xs.ravel(), ys.ravel()]
    endo = (np.abs(xy[:, 0] - 145) < 20) & (np.abs(xy[:, 1] - 145) < 20)
    d = np.min(np.linalg.norm(xy[:, None] - xy[endo][None], axis=2), axis=1)
    near = ~endo & (d <= 20)
    lam = np.full((len(xy), len(GENES)), 3.0)
    lam[endo, 0:2] = 30
    lam[near, 2] = 15
    lam[near, 4:6] = 12
    X = rng.poisson(lam).astype(np.float32)
    obs = pd.DataFrame({"cell_type": np.where(endo, "Endo", "Neuron")},
                       index=[f"c{i}" for i in range(len(xy))])
    if two_sections:  # a copy of the tissue without Endo cells, at the same coordinates
        X = np.r_[X, rng.poisson(np.full_like(lam, 3.0)).astype(np.float32)]
        obs = pd.concat([obs.assign(section="s1"), pd.DataFrame(
            {"cell_type": "Neuron", "section": "s2"}, index=[f"d{i}" for i in range(len(xy))])])
        xy = np.r_[xy, xy]
    a = ad.AnnData(X=X, obs=obs)
    a.var_names = GENES
    a.obsm["spatial"] = xy
    return a, int(near.sum())


@pytest.fixture
def lr_csv(tmp_path):
    p = tmp_path / "lr.csv"
    pd.DataFrame({"ligand": ["LIG1", "LIG2", "LIG1", "LIG1"],
                  "receptor": ["REC1", "REC2", "REC3_REC4", "REC9"]}).to_csv(p, index=False)
    return str(p)


def test_planted_pairs_found_near_not_far(lr_csv):
    a, n_near = tissue()
    r = ligand_receptor(a, LRParams(label_key="cell_type", sender="Endo", radius=20,
                                    lr_table=lr_csv, n_perms=300))
    assert r.mapping == "case-folding" and r.n_pairs_in_panel == 3 and r.n_near == n_near
    pairs = {(x.ligand, x.receptor): x for x in r.top_pairs}
    assert pairs[("LIG1", "REC1")].pval < 0.01 and pairs[("LIG1", "REC1")].fdr < 0.05
    assert pairs[("LIG1", "REC1")].near_mean > pairs[("LIG1", "REC1")].far_mean + 1
    assert pairs[("LIG1", "REC3_REC4")].pval < 0.01       # complex: both subunits up near
    assert pairs[("LIG2", "REC2")].pval > 0.05             # uniform receptor
    assert list(a.obs["lr_zone"].value_counts()[["sender", "near"]]) == [16, n_near]
    again = ligand_receptor(a, LRParams(label_key="cell_type", sender="Endo", radius=20,
                                        lr_table=lr_csv, n_perms=300))
    assert again.top_pairs == r.top_pairs                  # seeded


def test_sections_keep_distances_apart(lr_csv):
    a, n_near = tissue(two_sections=True)
    r = ligand_receptor(a, LRParams(label_key="cell_type", sender="Endo", radius=20,
                                    section_key="section", lr_table=lr_csv, n_perms=100))
    assert r.n_near == n_near                              # the copy in s2 is all "far"
    assert r.n_far == 2 * 900 - 16 - n_near


def test_liana_bundled_resource():
    assert liana_resource_path().endswith("liana/resource/omni_resource.csv")
    human = read_lr_pairs(None, "consensus")
    mouse = read_lr_pairs(None, "mouseconsensus")
    assert len(human) > 4000 and len(mouse) > 3000
    assert ((human.ligand == "LGALS9") & (human.receptor == "PTPRC")).any()
    with pytest.raises(UnknownKeyError, match="did you mean: consensus"):
        read_lr_pairs(None, "consenssus")


def test_lr_errors(lr_csv, tmp_path):
    a, _ = tissue()
    with pytest.raises(UnknownKeyError, match="did you mean: Endo"):
        ligand_receptor(a, LRParams(label_key="cell_type", sender="End", lr_table=lr_csv))
    with pytest.raises(ParameterError, match="empty neighbourhood: 0 receiver cells"):
        ligand_receptor(a, LRParams(label_key="cell_type", sender="Endo", radius=1,
                                    lr_table=lr_csv))
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\nx,y\n")
    with pytest.raises(DataError, match="needs ligand and receptor columns"):
        ligand_receptor(a, LRParams(label_key="cell_type", sender="Endo", lr_table=str(bad)))
    with pytest.raises(ParameterError, match="no ligand-receptor pair"):
        ligand_receptor(a, LRParams(label_key="cell_type", sender="Endo", resource="consensus"))


def test_merfish_near_far_with_liana_and_user_table(merfish, knowledge):
    import anndata as ad

    a = ad.read_h5ad(merfish)
    r = ligand_receptor(a, LRParams(label_key="cell_class", sender="Endothelial 1", radius=30,
                                    section_key="bregma", n_perms=200))
    assert r.resource == "liana:mouseconsensus" and r.mapping == "identity"
    assert r.n_pairs_tested >= 5 and 0 < r.n_near < r.n_far
    res = read_lr_pairs(None, "mouseconsensus")
    known = set(zip(res.ligand, res.receptor))
    table = a.uns["ligand_receptor"]["Endothelial 1:30um:sender_to_neighbours"]
    assert set(zip(table.ligand, table.receptor)) <= known
    assert set(table.ligand) | set(table.receptor) <= set(a.var_names)
    user = ligand_receptor(a, LRParams(
        label_key="cell_class", sender="Endothelial 1", radius=30, section_key="bregma",
        n_perms=200, lr_table=str(knowledge / "ligand_receptor" / "liana_consensus_mouse.csv")))
    assert user.n_pairs_tested == r.n_pairs_tested        # the same consensus, read from a file
