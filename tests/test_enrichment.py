"""DE, GSEA prerank and ORA: planted signal, species mapping, bad input, real data."""
import gzip

import numpy as np
import pandas as pd
import pytest

from tools.enrichment import (DEParams, GSEAParams, ORAParams, de_from_table,
                              differential_expression, gsea_prerank, overrepresentation,
                              overrepresentation_test, prerank)
from tools.errors import DataError, ParameterError, UnknownKeyError
from tools.genesets import map_gene_sets, read_gmt, read_orthologs


def planted_cells(n=50, n_genes=200, seed=0):
    """Groups T (treated) and R (reference) and O; Gene0-19 up in T, Gene20-29 down."""
    import anndata as ad

    rng = np.random.default_rng(seed)
    lam = np.full((3 * n, n_genes), 5.0)
    lam[:n, :20] = 25
    lam[:n, 20:30] = 0.5
    X = rng.poisson(lam).astype(np.float32)
    a = ad.AnnData(X=X, obs=pd.DataFrame(
        {"group": pd.Categorical(["T"] * n + ["R"] * n + ["O"] * n)},
        index=[f"c{i}" for i in range(3 * n)]))
    a.var_names = [f"Gene{i}" for i in range(n_genes)]
    return a


SETS = {"UP_SET": [f"GENE{i}" for i in range(0, 20, 2)] + ["NOTINDATA"],     # human-style
        "DOWN_SET": [f"GENE{i}" for i in range(20, 30)],
        "NULL_SET": [f"GENE{i}" for i in range(100, 160, 4)]}


def test_de_finds_planted_genes_vs_rest_and_reference():
    a = planted_cells()
    r = differential_expression(a, DEParams(groupby="group", group="T", n_top=5))
    assert {g.gene for g in r.top_up} <= {f"Gene{i}" for i in range(20)}
    assert {g.gene for g in r.top_down} <= {f"Gene{i}" for i in range(20, 30)}
    assert r.n_up >= 18 and r.n_down >= 8 and r.n_cells_reference == 100
    assert r.n_genes_tested == 200 and "T_vs_rest" in a.uns["de"]
    ref = differential_expression(a, DEParams(groupby="group", group="T", reference="R",
                                              method="t-test"))
    assert ref.key == "de/T_vs_R" and ref.n_cells_reference == 50 and ref.n_up >= 18


def test_de_errors():
    a = planted_cells()
    with pytest.raises(UnknownKeyError, match="did you mean: T"):
        differential_expression(a, DEParams(groupby="group", group="TT"))
    with pytest.raises(ParameterError, match="same"):
        differential_expression(a, DEParams(groupby="group", group="T", reference="T"))
    with pytest.raises(UnknownKeyError, match="obs column 'grp'"):
        differential_expression(a, DEParams(groupby="grp", group="T"))


def test_de_from_table_aliases_and_paths(tmp_path):
    df = pd.DataFrame({"names": ["A", "B", "C", "A"], "logfoldchanges": [1.0, -2.0, 0.5, 3.0]})
    t = de_from_table(df)
    assert list(t["gene"]) == ["A", "C", "B"]          # one row per gene, ranked by score
    assert t.loc[t.gene == "A", "score"].item() == 3.0  # logfc used as the score
    path = tmp_path / "de.tsv"
    pd.DataFrame({"gene": ["X", "Y"], "score": [2, -1], "padj": [0.01, 0.5]}).to_csv(
        path, sep="\t", index=False)
    assert list(de_from_table(str(path))["padj"]) == [0.01, 0.5]
    with pytest.raises(DataError, match="gene column and a score or logfc"):
        de_from_table(pd.DataFrame({"gene": ["A", "B"], "value": [1, 2]}))


def test_gmt_gz_and_species_mapping(tmp_path):
    plain, gz = tmp_path / "s.gmt", tmp_path / "s.gmt.gz"
    text = "".join("\t".join([k, "na", *v]) + "\n" for k, v in SETS.items())
    plain.write_text(text)
    with gzip.open(gz, "wt") as fh:
        fh.write(text)
    assert read_gmt(str(gz)) == read_gmt(str(plain)) == SETS
    genes = [f"Gene{i}" for i in range(200)]
    mapped, info = map_gene_sets(SETS, genes)
    assert info["mapping"] == "case-folding" and info["data_species"] == "mouse"
    assert mapped["UP_SET"] == sorted(f"Gene{i}" for i in range(0, 20, 2))
    # an orthologs table maps renamed genes that case-folding misses
    orth = tmp_path / "orth.tsv"
    pd.DataFrame({"human_symbol": ["HUMANONLY", "HUMANONLY"], "mouse_symbol": ["Gene7", "Gm1"],
                  "support_n": [9, 2]}).to_csv(orth, sep="\t", index=False)
    m2, i2 = map_gene_sets({"S": ["HUMANONLY", "GENE1"]}, genes, str(orth))
    assert i2["mapping"] == "orthologs" and m2["S"] == ["Gene7"]
    nohit = tmp_path / "nohit.gmt"
    nohit.write_text("S1\tna\tFOO\tBAR\n")
    with pytest.raises(ParameterError, match=r"nohit.gmt has no overlap.*overlap 0"):
        prerank(pd.DataFrame({"gene": genes, "score": np.arange(200.0)}), str(nohit))
    with pytest.raises(DataError, match="not found"):
        read_gmt(str(tmp_path / "missing.gmt"))


def test_prerank_recovers_planted_sets_and_is_seeded():
    a = planted_cells()
    differential_expression(a, DEParams(groupby="group", group="T"))
    p = GSEAParams(de="T_vs_rest", gene_sets="given", permutations=200, seed=3)
    res, table = prerank(a.uns["de"]["T_vs_rest"], SETS, permutations=200, seed=3)
    terms = {t.term: t for t in res.top_terms}
    assert terms["UP_SET"].nes > 0 and terms["UP_SET"].fdr < 0.05
    assert terms["DOWN_SET"].nes < 0 and terms["DOWN_SET"].fdr < 0.05
    assert terms["NULL_SET"].fdr > 0.25
    assert res.mapping == "case-folding" and res.overlap_genes == 35
    again, _ = prerank(a.uns["de"]["T_vs_rest"], SETS, permutations=200, seed=3)
    assert again.top_terms == res.top_terms
    assert p.permutations == 200
    with pytest.raises(ValueError):
        GSEAParams(de="x", gene_sets="y", permutations=100000)  # bounded permutations
    with pytest.raises(UnknownKeyError, match="no DE table 'T_vs_rst'.*did you mean"):
        gsea_prerank(a, GSEAParams(de="T_vs_rst", gene_sets="y"))


def test_ora_planted(tmp_path):
    a = planted_cells()
    gmt = tmp_path / "sets.gmt"
    gmt.write_text("".join("\t".join([k, "na", *v]) + "\n" for k, v in SETS.items()))
    with pytest.raises(ParameterError, match="no DE table yet"):
        overrepresentation(a, ORAParams(gene_sets=str(gmt)))
    differential_expression(a, DEParams(groupby="group", group="T"))
    r = overrepresentation(a, ORAParams(gene_sets=str(gmt)))  # the latest DE table
    assert r.key == "ora/T_vs_rest:up:sets.gmt"
    assert r.top_terms[0].term == "UP_SET" and r.top_terms[0].padj < 1e-3
    assert r.n_query == 20 and r.n_background == 200
    down = overrepresentation(a, ORAParams(de="T_vs_rest", gene_sets=str(gmt),
                                           direction="down"))
    assert down.top_terms[0].term == "DOWN_SET"
    assert "T_vs_rest:up:sets.gmt" in a.uns["ora"]
    with pytest.raises(UnknownKeyError, match="Gene999"):
        overrepresentation_test(["Gene999"], a.var_names, SETS)
    mine = overrepresentation(a, ORAParams(genes=["Gene21", "Gene23", "Gene25"],
                                           gene_sets=str(gmt)))
    assert mine.top_terms[0].term == "DOWN_SET" and mine.n_background == 200


def test_real_orthologs_table(knowledge):
    o = read_orthologs(str(knowledge / "orthologs" / "human_mouse_orthologs_hcop.tsv.gz"))
    assert o["human_to_mouse"]["GFAP"] == ["Gfap"] and o["mouse_to_human"]["Mbp"] == ["MBP"]
    assert o["human_to_mouse"]["A2M"] == ["A2m"]  # best-supported partner only


def test_ora_merfish_oligodendrocytes_myelination(merfish, knowledge):
    import anndata as ad

    a = ad.read_h5ad(merfish)
    differential_expression(a, DEParams(groupby="cell_class", group="OD Mature 2"))
    r = overrepresentation(a, ORAParams(
        de="OD Mature 2_vs_rest", max_genes=8,
        gene_sets=str(knowledge / "gene_sets" / "m5.go.bp.v2023.1.Mm.symbols.gmt.gz")))
    # this GO release files myelination under GOBP_ENSHEATHMENT_OF_NEURONS (Mbp, Gjc3, Ndrg1)
    top3 = [t.term for t in r.top_terms[:3]]
    assert any("ENSHEATHMENT" in t or "MYELIN" in t for t in top3), top3
    assert 150 <= r.n_background <= 156 and r.overlap_genes > 100


def _ob_de(shared_data):
    import anndata as ad

    path = shared_data / "spatial" / "st_mouse_olfactory_bulb_stahl2016.h5ad"
    if not path.exists():
        pytest.skip("st_mouse_olfactory_bulb_stahl2016.h5ad is absent from the data folder")
    a = ad.read_h5ad(path)
    differential_expression(a, DEParams(groupby="ground_truth", group="5: Olfactory Nerve Layer",
                                        name="onl"))
    return a


def test_gsea_olfactory_nerve_layer_mouse_hallmark(shared_data, knowledge):
    a = _ob_de(shared_data)
    r = gsea_prerank(a, GSEAParams(de="onl", permutations=200, gene_sets=str(
        knowledge / "gene_sets" / "mh.all.v2023.1.Mm.symbols.gmt")))
    assert r.top_terms[0].fdr < 0.25 and r.overlap_genes > 1000 and r.mapping == "identity"
    emt = a.uns["gsea"]["onl:mh.all.v2023.1.Mm.symbols.gmt"].set_index("term").loc[
        "HALLMARK_EPITHELIAL_MESENCHYMAL_TRANSITION"]
    assert emt["nes"] > 1.5 and emt["fdr"] < 0.05  # nerve layer: fibroblast/ECM-rich


@pytest.mark.slow
def test_gsea_human_hallmark_on_mouse_via_orthologs(shared_data, knowledge):
    a = _ob_de(shared_data)
    r = gsea_prerank(a, GSEAParams(
        de="onl", permutations=500,
        gene_sets=str(knowledge / "gene_sets" / "h.all.v2024.1.Hs.symbols.gmt"),
        orthologs=str(knowledge / "orthologs" / "human_mouse_orthologs_hcop.tsv.gz")))
    assert r.mapping == "orthologs" and r.gene_set_species == "human"
    top = {t.term: t for t in r.top_terms}
    assert top["HALLMARK_EPITHELIAL_MESENCHYMAL_TRANSITION"].nes > 1.5
