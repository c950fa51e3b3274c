"""Marker genes and marker-list domain annotation: planted signal and real MERFISH."""
import gzip

import numpy as np
import pandas as pd
import pytest

from tools.errors import DataError, ParameterError, UnknownKeyError
from tools.markers import AnnotateParams, MarkerParams, annotate_domains, marker_genes


def planted(n=60, n_genes=30, seed=0):
    """3 groups of n cells; group A high in Gene0-2, group B high in Gene3-5 (raw counts)."""
    import anndata as ad

    rng = np.random.default_rng(seed)
    lam = np.full((3 * n, n_genes), 2.0)
    lam[:n, 0:3] = 20
    lam[n:2 * n, 3:6] = 20
    X = rng.poisson(lam).astype(np.float32)
    obs = pd.DataFrame({"domain": pd.Categorical(["A"] * n + ["B"] * n + ["C"] * n)},
                       index=[f"c{i}" for i in range(3 * n)])
    a = ad.AnnData(X=X, obs=obs)
    a.var_names = [f"Gene{i}" for i in range(n_genes)]
    a.obsm["spatial"] = rng.uniform(0, 100, (3 * n, 2))
    return a


def test_markers_find_planted_genes_and_leave_data_untouched():
    a = planted()
    X0 = a.X.copy()
    r = marker_genes(a, MarkerParams(groupby="domain", n_top=3))
    assert {m.gene for m in r.markers["A"]} == {"Gene0", "Gene1", "Gene2"}
    assert {m.gene for m in r.markers["B"]} == {"Gene3", "Gene4", "Gene5"}
    assert all(m.logfc > 1 and m.padj < 1e-6 for m in r.markers["A"])
    assert r.transform == "normalize_total + log1p"
    table = a.uns["markers"]["domain"]
    assert set(table["group"]) == {"A", "B", "C"}
    np.testing.assert_array_equal(a.X, X0)


def test_marker_errors_name_the_problem():
    a = planted()
    with pytest.raises(UnknownKeyError, match="did you mean: domain"):
        marker_genes(a, MarkerParams(groupby="domian"))
    with pytest.raises(UnknownKeyError, match="unknown group.*'D'"):
        marker_genes(a, MarkerParams(groupby="domain", groups=["D"]))
    a.obs["domain"] = pd.Categorical(["A"] * 2 + ["B"] * 178)
    with pytest.raises(ParameterError, match="too few cells"):
        marker_genes(a, MarkerParams(groupby="domain", groups=["A"]))


def test_annotate_with_dict_gmt_and_tsv(tmp_path):
    a = planted()
    lists = {"TypeA": ["GENE0", "GENE1", "GENE2", "OTHER1"],   # human-style: case-folded
             "TypeB": ["GENE3", "GENE4", "GENE5"], "Decoy": ["GENE20", "GENE21", "GENE22"]}
    p = AnnotateParams(groupby="domain", markers="given", n_markers=5)
    r = annotate_domains(a, p, marker_lists=lists)
    lab = {d.group: d for d in r.labels}
    assert lab["A"].label == "TypeA" and lab["A"].confident and lab["A"].overlap == 3
    assert lab["B"].label == "TypeB" and lab["B"].confident
    assert not lab["C"].confident
    assert r.mapping == "case-folding"
    assert set(a.obs["domain_label"][a.obs["domain"] == "A"]) == {"TypeA"}
    assert set(a.obs["domain_label"][a.obs["domain"] == "C"]) == {"unassigned"}
    gmt = tmp_path / "m.gmt.gz"
    with gzip.open(gmt, "wt") as fh:
        for k, v in lists.items():
            fh.write("\t".join([k, "na", *v]) + "\n")
    r2 = annotate_domains(a, AnnotateParams(groupby="domain", markers=str(gmt), n_markers=5))
    assert [d.label for d in r2.labels] == [d.label for d in r.labels]
    tsv = tmp_path / "m.tsv"
    pd.DataFrame([(k, g, "Brain") for k, v in lists.items() for g in v],
                 columns=["cell_type", "gene", "organ"]).to_csv(tsv, sep="\t", index=False)
    r3 = annotate_domains(a, AnnotateParams(groupby="domain", markers=str(tsv), n_markers=5,
                                            where={"organ": "brain"}))
    assert {d.group: d.label for d in r3.labels}["B"] == "TypeB"


def test_annotate_bad_marker_files(tmp_path):
    a = planted()
    gmt = tmp_path / "nohit.gmt"
    gmt.write_text("SET1\tna\tFOO\tBAR\nSET2\tna\tBAZ\tQUX\n")
    with pytest.raises(ParameterError, match=r"nohit.gmt.*overlap 0"):
        annotate_domains(a, AnnotateParams(groupby="domain", markers=str(gmt)))
    bad = tmp_path / "bad.tsv"
    bad.write_text("x\ty\n1\t2\n")
    with pytest.raises(DataError, match="cannot find a type column"):
        annotate_domains(a, AnnotateParams(groupby="domain", markers=str(bad)))
    with pytest.raises(DataError, match="not found"):
        annotate_domains(a, AnnotateParams(groupby="domain", markers=str(tmp_path / "no.tsv")))


def test_merfish_oligodendrocyte_markers_are_myelin_genes(merfish):
    import anndata as ad

    a = ad.read_h5ad(merfish)
    r = marker_genes(a, MarkerParams(groupby="cell_class", groups=["OD Mature 2", "Astrocyte"],
                                     n_top=10))
    od = [m.gene for m in r.markers["OD Mature 2"]]
    assert {"Mbp", "Ermn", "Opalin", "Gjc3"} & set(od[:10]) >= {"Mbp", "Ermn"}
    assert not any(g.startswith("Blank") for g in a.uns["markers"]["cell_class"]["gene"])
    mbp = next(m for m in r.markers["OD Mature 2"] if m.gene == "Mbp")
    assert mbp.pct_in > 0.9 and mbp.pct_out < 0.5
    assert {"Aqp4", "Aldh1l1"} <= {m.gene for m in r.markers["Astrocyte"][:5]}


@pytest.mark.slow
def test_merfish_annotation_with_panglaodb(merfish, knowledge):
    import anndata as ad

    a = ad.read_h5ad(merfish)
    a = a[a.obs["bregma"] == 0.26].copy()
    r = annotate_domains(a, AnnotateParams(
        groupby="cell_class", method="t-test", n_markers=10, where={"organ": "Brain"},
        markers=str(knowledge / "cell_markers" / "PanglaoDB_markers_27_Mar_2020.tsv.gz")))
    lab = {d.group: d for d in r.labels}
    assert lab["OD Mature 2"].label == "Oligodendrocytes" and lab["OD Mature 2"].confident
    assert lab["Astrocyte"].label == "Astrocytes"
