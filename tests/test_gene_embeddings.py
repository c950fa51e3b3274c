"""Gene / cell embeddings from descriptions, kNN annotation, clustering scores, in-silico deletion."""
import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
from kb_helpers import slice_for_genes

from tools import gene_embeddings as ge
from tools import knowledge as kb
from tools.errors import DataError, ParameterError, UnknownKeyError


@pytest.fixture(scope="module")
def osm(osmfish):
    import scanpy as sc

    a = ad.read_h5ad(osmfish)
    sc.pp.normalize_total(a)
    sc.pp.log1p(a)
    return a


@pytest.fixture(scope="module")
def store(tmp_path_factory, knowledge, osm):
    path = tmp_path_factory.mktemp("kb_mouse")
    src = slice_for_genes(knowledge / "gene_descriptions", "mouse", osm.var_names, path / "src")
    res = kb.build_store(src, "mouse", path, genes=list(osm.var_names))
    assert res.missing_genes == [] and res.n_added == osm.n_vars
    return str(path)


def toy(store, x, genes=("Plp1", "Gfap", "Vip")):
    a = ad.AnnData(np.asarray(x, np.float32))
    a.var_names = list(genes)
    a.uns["dataset_info"] = {"organism": "Mus musculus"}
    return a


def test_gene_embeddings_coverage(osm, store):
    a = osm.copy()
    res = ge.gene_embeddings(a, ge.GeneEmbeddingParams(store=store))
    assert res.species == "mouse" and res.n_genes == 33 and res.n_with_text == 33 and res.coverage == 1.0
    assert res.n_refseq + res.n_ortholog + res.n_name_only == 33 and res.n_ortholog > 0
    assert a.varm["X_genept"].shape == (33, 384)
    assert np.allclose(np.linalg.norm(a.varm["X_genept"], axis=1), 1, atol=1e-4)
    assert a.var.loc["Tmem2", "genept_source"] != "none"  # matched through its synonym (now Cemip2)
    strict = ge.gene_embeddings(a, ge.GeneEmbeddingParams(store=store, require_summary=True))
    assert strict.n_with_text == res.n_refseq + res.n_ortholog < 33


def test_wa_and_aa_follow_their_definitions(store):
    a = toy(store, [[2, 1, 0], [0, 0, 3], [0, 0, 0]])
    a.X = sp.csr_matrix(a.X)
    res = ge.cell_embeddings(a, ge.CellEmbeddingParams(store=store))
    e = a.varm["X_genept"]
    unit = lambda v: v / np.linalg.norm(v)  # noqa: E731
    assert np.allclose(a.obsm["X_genept_wa"][0], unit(2 * e[0] + e[1]), atol=1e-5)
    assert np.allclose(a.obsm["X_genept_aa"][0], unit(e[0] + e[1]), atol=1e-5)
    assert np.allclose(a.obsm["X_genept_wa"][1], e[2], atol=1e-5)
    assert not a.obsm["X_genept_wa"][2].any() and res.n_empty_cells == 1


def test_knn_annotation_beats_majority_on_osmfish(osm, store):
    a = osm.copy()
    ge.cell_embeddings(a, ge.CellEmbeddingParams(store=store, method="wa"))
    res = ge.knn_annotate(a, ge.KnnParams(embedding="X_genept_wa", label_key="cell_type"))
    majority = a.obs["cell_type"].value_counts(normalize=True).iloc[0]
    assert res.n_reference + res.n_query == a.n_obs
    assert res.accuracy > 2 * majority and 0 < res.f1 <= 1
    pred = a.obs["knn_label"].dropna()
    assert len(pred) == res.n_query and set(pred) <= set(a.obs["cell_type"])


def test_knn_split_key_and_errors(store):
    rng = np.random.default_rng(0)
    x = np.vstack([rng.normal(0, 0.1, (40, 4)) + [1, 0, 0, 0], rng.normal(0, 0.1, (40, 4)) + [0, 1, 0, 0]])
    a = ad.AnnData(np.zeros((80, 1), np.float32), obsm={"e": x})
    a.obs["label"] = ["a"] * 40 + ["b"] * 40
    a.obs["section"] = ["s1", "s2"] * 40
    res = ge.knn_annotate(a, ge.KnnParams(embedding="e", label_key="label", split_key="section", reference="s1", k=5))
    assert (res.n_reference, res.n_query, res.accuracy, res.f1) == (40, 40, 1.0, 1.0)
    with pytest.raises(ParameterError, match="reference must be one of"):
        ge.knn_annotate(a, ge.KnnParams(embedding="e", label_key="label", split_key="section", reference="s3"))
    with pytest.raises(UnknownKeyError, match="obsm key 'X_genept_wa'"):
        ge.knn_annotate(a, ge.KnnParams(label_key="label"))
    with pytest.raises(UnknownKeyError, match="obs column 'lable'"):
        ge.knn_annotate(a, ge.KnnParams(embedding="e", label_key="lable"))
    sc = ge.embedding_cluster_scores(a, ge.ClusterScoreParams(embedding="e", label_key="label"))
    assert sc.ari == 1.0 and sc.nmi == 1.0 and sc.asw > 0.8


def test_cluster_scores_on_osmfish_regions(osm, store):
    a = osm.copy()
    ge.cell_embeddings(a, ge.CellEmbeddingParams(store=store, method="wa"))
    res = ge.embedding_cluster_scores(a, ge.ClusterScoreParams(
        embedding="X_genept_wa", label_key="region", mask_key="in_benchmark"))
    assert res.n_clusters == 11 and 0.05 < res.nmi < 1 and -1 <= res.asw <= 1
    assert a.obs["emb_cluster"].isna().sum() == (~a.obs["in_benchmark"]).sum()
    # the same clusters against shuffled labels: no agreement left
    from sklearn.metrics import adjusted_rand_score

    m = a.obs["in_benchmark"].to_numpy()
    shuffled = np.random.default_rng(0).permutation(a.obs["region"].to_numpy()[m])
    assert abs(adjusted_rand_score(shuffled, a.obs["emb_cluster"][m])) < 0.02 < res.ari


def test_deletion_of_the_only_difference_restores_similarity(store):
    # condition cells = control cells + Plp1: deleting Plp1 makes them identical
    a = toy(store, [[5, 1, 2], [4, 2, 1], [0, 1, 2], [0, 2, 1]])
    a.obs["group"] = ["disease", "disease", "control", "control"]
    res = ge.in_silico_deletion(a, ge.DeletionParams(store=store, condition_key="group",
                                                    condition="disease", control="control"))
    assert res.top_genes[0] == "Plp1" and res.baseline_similarity < 0.999
    assert res.baseline_similarity + res.top_deltas[0] == pytest.approx(1.0, abs=1e-5)
    assert a.uns["insilico_deletion"]["gene"][0] == "Plp1" and res.n_tested == 3


def test_deletion_on_osmfish_finds_oligodendrocyte_gene(osm, store):
    a = osm.copy()
    res = ge.in_silico_deletion(a, ge.DeletionParams(store=store, condition_key="region",
                                                    condition="White matter", control="Layer 4"))
    assert res.n_condition == 877 and res.n_control == 1002 and res.n_tested == 33
    assert res.top_genes[0] in {"Plp1", "Mfge8", "Anln", "Sox10"}  # white-matter / oligodendrocyte genes
    assert res.top_deltas[0] > 0
    with pytest.raises(UnknownKeyError, match="'Layer 44' is not a value"):
        ge.in_silico_deletion(a, ge.DeletionParams(store=store, condition_key="region",
                                                  condition="White matter", control="Layer 44"))


def test_rank_sentences(osm, store):
    x = sp.csr_matrix(np.array([[0, 3, 1], [0, 0, 0]], np.float32))
    assert ge.rank_sentences(x, ["A", "B", "C"], 5) == ["Genes ranked by expression: B, C.", "No genes expressed."]
    a = osm[:60].copy()
    res = ge.rank_sentence_embeddings(a, ge.RankSentenceParams(store=store, n_genes=5, text="names"))
    top = a.var_names[np.argmax(a.X[0].toarray() if sp.issparse(a.X) else a.X[0])]
    name = kb.get_genes([top], "mouse", store, embeddings=False).found[top]["meta"]["full_name"]
    assert a.obs["gene_sentence"].iloc[0].startswith(f"Genes ranked by expression: {name}")
    assert a.obsm["X_screader"].shape == (60, 384) and res.n_names_missing == 0


def test_bad_expression_and_unmatched_genes(store):
    a = toy(store, [[-1.0, 0.5, 0.2]])
    with pytest.raises(DataError, match="negative or NaN"):
        ge.cell_embeddings(a, ge.CellEmbeddingParams(store=store))
    b = toy(store, [[1, 2]], genes=("NOTAGENE1", "NOTAGENE2"))
    with pytest.raises(DataError, match="none of the 2 genes"):
        ge.gene_embeddings(b, ge.GeneEmbeddingParams(store=store))
    c = toy(store, [[1, 2]], genes=("Plp1", "NOTAGENE2"))
    res = ge.gene_embeddings(c, ge.GeneEmbeddingParams(store=store))
    assert res.missing == ["NOTAGENE2"] and res.coverage == 0.5
    with pytest.raises(DataError, match="no human genes"):
        ge.gene_embeddings(c, ge.GeneEmbeddingParams(store=store, species="human"))


def test_tools_registered():
    from tools.registry import REGISTRY

    for name in ("gene_embeddings", "cell_embeddings", "rank_sentence_embeddings", "knn_annotate",
                 "embedding_cluster_scores", "in_silico_deletion"):
        assert name in REGISTRY
    assert "annotate cell types zero-shot" in REGISTRY["knn_annotate"].intents
    assert "gene deletion in silico" in REGISTRY["in_silico_deletion"].intents


@pytest.mark.slow
def test_rag_prompts_carry_retrieved_descriptions(dlpfc_hvg300, knowledge, tmp_path):
    """describe_genes() output is what the ST-LLM RAG prompt variant consumes."""
    import scanpy as sc
    import squidpy as sq

    from tools.serialise import PromptParams, serialise_prompts

    a = ad.read_h5ad(dlpfc_hvg300)
    sc.pp.normalize_total(a)
    sc.pp.log1p(a)
    sq.gr.spatial_neighbors(a, coord_type="grid", n_neighs=6)
    src = slice_for_genes(knowledge / "gene_descriptions", "human", a.var_names, tmp_path / "src")
    res = kb.build_store(src, "human", tmp_path / "kb", genes=list(a.var_names))
    desc = kb.describe_genes(list(a.var_names), "human", tmp_path / "kb")
    assert len(desc) > 250 and res.n_records >= len(desc)
    serialise_prompts(a, PromptParams(variant="rag", descriptions=desc, n_genes=5, max_tokens=1024))
    genes = [g.strip() for g in a.obs["prompt_genes"].iloc[0].split(",")]
    assert any(desc[g][:30] in a.obs["prompt"].iloc[0] for g in genes if g in desc)
