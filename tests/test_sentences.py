"""Cell / spatial sentences, their parser and the rank -> expression model."""
import numpy as np
import pytest

from tools.errors import ParameterError, UnknownKeyError
from tools.sentences import (RankExpressionModel, cell_sentence, parse_cell_sentence,
                             parse_spatial_sentence, rank_order, require_gene, spatial_sentence,
                             square_neighbourhood, traversal_order)

GENES = np.array(["Cd4", "Aqp4", "Gad1", "Sst", "Olig2"])


def test_cell_sentence_orders_by_expression_ties_by_name_and_skips_zeros():
    vals = np.array([1.0, 2.0, 1.0, 0.0, 3.0])
    s = cell_sentence(vals, GENES, 12.4, -3.6, ["Astrocyte"], top_n=10)
    assert s == "12, -4, Astrocyte, Olig2 Aqp4 Cd4 Gad1"
    assert cell_sentence(vals, GENES, top_n=2) == "Olig2 Aqp4"
    assert list(rank_order(vals, GENES)) == [4, 1, 0, 2, 3]


def test_parse_cell_sentence_round_trip_and_unknown_genes():
    cell = parse_cell_sentence("12, -4, OD Mature 2, olig2 Aqp4 FOO Cd4 Aqp4 7", GENES)
    assert (cell.x, cell.y, cell.metadata) == (12.0, -4.0, ["OD Mature 2"])
    assert cell.genes == ["Olig2", "Aqp4", "Cd4"]  # case-folded, deduplicated, numbers skipped
    assert cell.unknown == ["FOO"]
    bare = parse_cell_sentence("Gad1, Sst", GENES)
    assert bare.genes == ["Gad1", "Sst"] and bare.x is None


def test_traversal_is_seeded_starts_at_anchor_and_visits_each_cell_once():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 100, (30, 2))
    a = traversal_order(xy, (0, 0), temperature=20, seed=3)
    assert sorted(a) == list(range(30))
    assert a[0] == np.argmin(np.linalg.norm(xy, axis=1))
    assert list(a) == list(traversal_order(xy, (0, 0), temperature=20, seed=3))
    assert list(a) != list(traversal_order(xy, (0, 0), temperature=20, seed=4))
    line = np.c_[np.arange(10) * 10.0, np.zeros(10)]
    assert list(traversal_order(line, (95, 0), temperature=0.5, seed=0)) == list(range(9, -1, -1))
    with pytest.raises(ParameterError):
        traversal_order(xy, (0, 0), temperature=0)


def test_spatial_sentence_parses_back_to_its_cells():
    rng = np.random.default_rng(1)
    xy = rng.uniform(-60, 60, (40, 2))
    expr = rng.poisson(1.0, (40, 5)).astype(float)
    meta = [["A" if i % 2 else "B"] for i in range(40)]
    inside = square_neighbourhood(xy, (0, 0), 50)
    assert set(inside) == set(np.flatnonzero((np.abs(xy) <= 25).all(1)))
    text, order = spatial_sentence(expr, GENES, xy, meta, (0, 0), side=50, anchor="top_left",
                                   temperature=10, seed=0, exclude=[inside[0]])
    assert set(order) == set(inside[1:])
    cells = parse_spatial_sentence(text, GENES)
    assert len(cells) == len(order)
    for c, i in zip(cells, order):
        assert c.metadata == meta[i] and abs(c.x - xy[i, 0]) <= 0.5
        assert c.genes == cell_sentence(expr[i], GENES).split()
    with pytest.raises(ParameterError, match="did you mean"):
        spatial_sentence(expr, GENES, xy, meta, (0, 0), anchor="top_lef")


def test_rank_expression_model_recovers_a_linear_law_and_inverts():
    rng = np.random.default_rng(0)
    expr = np.zeros((50, 40))
    for c in range(50):
        genes = rng.permutation(40)[:30]
        expr[c, genes] = 4.0 - 2.0 * np.log10(np.arange(1, 31))
    m = RankExpressionModel.fit(expr)
    assert m.slope == pytest.approx(-2.0, abs=1e-6) and m.r2 == pytest.approx(1.0)
    names = np.array([f"G{i}" for i in range(40)])
    back = m.to_expression([["G3", "G1"]], names)
    assert back[0, 3] == pytest.approx(4.0) and back[0, 1] == pytest.approx(4.0 - 2 * np.log10(2))
    assert back[0].sum() == pytest.approx(back[0, 1] + back[0, 3])


def test_require_gene_suggests_close_names():
    assert require_gene(GENES, "gad1") == "Gad1"
    with pytest.raises(UnknownKeyError, match="did you mean: Aqp4"):
        require_gene(GENES, "Aqp5")


def test_cell_sentences_tool_on_merfish(merfish):
    import anndata as ad

    from tools.generation import log_expression
    from tools.sentences import CellSentenceParams, cell_sentences

    adata = ad.read_h5ad(merfish)[:300].copy()
    r = cell_sentences(adata, CellSentenceParams(metadata_keys=["cell_class"], top_n=5))
    expr, genes = log_expression(adata)
    assert r.n_genes == 156 and r.rank_model.slope < 0
    s = adata.obs["cell_sentence"].iloc[7]
    cell = parse_cell_sentence(s, genes)
    assert cell.metadata == [adata.obs["cell_class"].iloc[7]]
    assert cell.genes == [str(genes[i]) for i in rank_order(expr[7], genes)[:5]]
    assert np.allclose([cell.x, cell.y], np.round(adata.obsm["spatial"][7]), atol=0.51)
