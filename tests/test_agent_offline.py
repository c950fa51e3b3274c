"""The offline planner and template narrator, end to end through the LangGraph agent."""
from typing import Literal

import anndata as ad
import numpy as np
import pytest
from pydantic import BaseModel, Field

from agent import narrator
from agent.entities import extract
from agent.planner import fill_args
from agent.runner import Agent
from agent.session import Session
from tools.registry import ToolSpec


@pytest.fixture
def agent(tmp_path, small_h5ad):
    s = Session.open(tmp_path / "session", extra_roots=[small_h5ad])
    s.load_dataset(small_h5ad)
    a = Agent(s, "offline")
    yield a
    a.close()


def test_describe_real_data_every_number_from_results(tmp_path, dlpfc_hvg300):
    s = Session.open(tmp_path / "s", extra_roots=[dlpfc_hvg300])
    s.load_dataset(dlpfc_hvg300)
    a = Agent(s, "offline")
    res = a.ask("Give me an overview of the data")
    a.close()
    truth = ad.read_h5ad(dlpfc_hvg300)
    assert [c["name"] for c in res["tool_calls"]] == ["describe_dataset"] and res["tool_calls"][0]["ok"]
    assert res["numbers"]["describe_dataset.n_obs"] == truth.n_obs == 3639
    n_l3 = int((truth.obs["ground_truth"] == "Layer3").sum())
    assert res["numbers"]["describe_dataset.annotations.ground_truth.Layer3"] == n_l3
    assert f"Layer3: {n_l3}" in res["answer"]
    assert narrator.unsupported_numbers(res["answer"], res["steps"]) == [] == res["unsupported"]
    assert narrator.unsupported_numbers(res["answer"] + " and 4242 more", res["steps"]) == ["4242"]


def test_entities_from_real_data(dlpfc_hvg300):
    adata = ad.read_h5ad(dlpfc_hvg300)
    ent = extract("Show PLP1 and npy in Layer3 and WM; find 7 domains within 30 µm; also FOOBAR9", adata)
    assert ent.genes == ["PLP1", "NPY"]
    assert ("ground_truth", "Layer3") in ent.categories and ("ground_truth", "WM") in ent.categories
    assert (7.0, "domains") in ent.numbers and (30.0, "µm") in ent.numbers
    assert ent.unknown_genes == ["FOOBAR9"]


def test_fill_args_numbers_units_choices():
    class P(BaseModel):
        dataset: str = Field("data", description="id of a loaded dataset")
        n_domains: int = Field(7, ge=2, le=50, description="number of spatial domains")
        radius: float = Field(50.0, description="neighbourhood radius in µm")
        method: Literal["gmm", "kmeans", "leiden"] = Field("gmm", description="clustering")

    spec = ToolSpec("t", lambda a, p: None, P, P, "t")
    text = "find 5 domains with kmeans, neighbours within 30 µm"
    args, missing = fill_args(spec, text, extract(text), "data")
    assert args == {"dataset": "data", "n_domains": 5, "radius": 30.0, "method": "kmeans"}
    assert missing == [] and P.model_validate(args).n_domains == 5


def test_new_tool_is_planned_from_its_intents(test_tools, agent, small_h5ad):
    res = agent.ask("what is the mean expression of RELN in Layer1?")
    assert [c["name"] for c in res["tool_calls"]] == ["group_mean"]
    call = res["tool_calls"][0]
    assert call["ok"] and call["args"]["gene"] == "RELN" and call["args"]["group"] == "Layer1"
    a = ad.read_h5ad(small_h5ad)
    x = np.asarray(a[:, "RELN"].X.todense()).ravel() if hasattr(a.X, "todense") else a[:, "RELN"].X.ravel()
    expect = round(float(x[(a.obs["ground_truth"] == "Layer1").to_numpy()].mean()), 3)
    assert res["numbers"]["group_mean.means.Layer1"] == pytest.approx(expect)
    assert res["unsupported"] == []


def test_unregistered_intent_is_not_understood(agent):
    res = agent.ask("what is the mean expression of RELN?")
    assert res["tool_calls"] == []
    assert "could not understand" in res["answer"]
    assert "describe" in res["answer"]  # lists what it can do


def test_missing_prerequisite_is_planned_from_docstrings(test_tools, agent):
    res = agent.ask("score the flags")
    assert [(c["name"], c["ok"]) for c in res["tool_calls"]] == [
        ("flag_score", False), ("flag_spots", True), ("flag_score", True)]
    flagged = res["numbers"]["flag_spots.n_flagged"]
    assert res["numbers"]["flag_score.mean_score"] == pytest.approx(flagged / 101, abs=1e-4)
    assert "flag" in ad.read_h5ad(agent.session.dir / "datasets" / "data.h5ad").obs


def test_empty_and_nonsense_requests(agent):
    for q in ("", "   "):
        res = agent.ask(q)
        assert res["tool_calls"] == [] and "request is empty" in res["answer"]
    res = agent.ask("purple monkey dishwasher")
    assert res["tool_calls"] == [] and "could not understand" in res["answer"]
    assert agent.ask("describe the data")["tool_calls"][0]["ok"]  # the session still works


def test_unknown_gene_and_cell_type(test_tools, agent):
    res = agent.ask("mean expression of RELNN")
    assert res["tool_calls"] == []
    assert "'RELNN' (did you mean: RELN" in res["answer"] and "not among the dataset's genes" in res["answer"]
    res = agent.ask("mean expression of RELN in Purkinje cells")
    assert res["tool_calls"] == []
    assert "'Purkinje'" in res["answer"] and "not in the dataset's annotations" in res["answer"]
    assert "Layer1" in res["answer"]  # names what exists


def test_no_dataset_loaded(tmp_path):
    a = Agent(Session.open(tmp_path / "s"), "offline")
    res = a.ask("describe the data")
    a.close()
    assert res["tool_calls"] == [] and "No dataset is loaded" in res["answer"]


def test_step_budget_stops_with_a_clear_answer(test_tools, tmp_path, small_h5ad):
    s = Session.open(tmp_path / "s", extra_roots=[small_h5ad])
    s.load_dataset(small_h5ad)
    a = Agent(s, "offline", max_steps=2)
    res = a.ask("score the flags")  # needs three calls
    a.close()
    assert len(res["tool_calls"]) == 2 and "the step budget was reached" in res["answer"]


@pytest.mark.slow
def test_domains_on_real_data_plans_the_missing_steps(tmp_path, dlpfc_hvg300):
    """'find 7 spatial domains' on a raw slice: the planner adds preprocessing and the spatial
    graph from the tools' own errors and docstrings, then finds the domains."""
    s = Session.open(tmp_path / "s", extra_roots=[dlpfc_hvg300])
    s.load_dataset(dlpfc_hvg300)
    a = Agent(s, "offline")
    res = a.ask("find 7 spatial domains")
    a.close()
    names = [c["name"] for c in res["tool_calls"] if c["ok"]]
    assert names[-2:] == ["find_domains", "plot_spatial"] and {"preprocess", "build_graph"} <= set(names)
    last = [s for s in res["steps"] if s["ok"] and s["name"] == "find_domains"][0]["result"]
    assert len(last["sizes"]) == 7 and last["n_domains"] == 7
    assert sum(last["sizes"].values()) == ad.read_h5ad(s.dir / "datasets" / "data.h5ad").n_obs
    assert res["unsupported"] == []


def test_arguments_made_by_an_earlier_step_are_filled_late(test_tools, agent):
    res = agent.ask("split into halves, then count spots per side")
    assert [(c["name"], c["ok"]) for c in res["tool_calls"]] == [("split_halves", True), ("count_groups", True)]
    assert res["tool_calls"][1]["args"]["groupby"] == "side"
    n_upper = res["numbers"]["split_halves.n_flagged"]
    assert res["numbers"]["count_groups.counts.upper"] == n_upper
    res = agent.ask("count spots per thing")  # nothing can supply the column
    assert res["tool_calls"] == [] and "count_groups needs groupby" in res["answer"]


def test_common_cell_type_names_map_to_annotations(merfish):
    """'oligodendrocytes' -> the most abundant OD class; the mapping is said in the answer."""
    a = ad.read_h5ad(merfish, backed="r")
    ent = extract("what happens to oligodendrocytes if I put microglia next to them?", a)
    counts = a.obs["cell_class"].astype(str).value_counts()
    od = counts[counts.index.str.startswith("OD")].idxmax()
    assert ("cell_class", od) in ent.categories and ("cell_class", "Microglia") in ent.categories
    assert [v for c, v in ent.categories if c == "cell_class"] == [od, "Microglia"]  # text order
    assert any("oligodendrocyte" in n and od in n for n in ent.mapped)


@pytest.mark.slow
def test_layers_and_white_matter_markers_keep_the_annotation(tmp_path, dlpfc_hvg300):
    """The README's kind of request on real DLPFC: domains go to a new column (ground_truth is
    never overwritten) and white matter's markers are myelin genes."""
    s = Session.open(tmp_path / "s", extra_roots=[dlpfc_hvg300])
    s.load_dataset(dlpfc_hvg300)
    truth = s.get("data").obs["ground_truth"].astype(str).copy()
    a = Agent(s, "offline")
    res = a.ask("find the cortical layers in this Visium slice and tell me what distinguishes white matter")
    a.close()
    done = {c["name"]: c["args"] for c in res["tool_calls"] if c["ok"]}
    assert done["find_domains"].get("key_added", "domain") == "domain"
    assert done["plot_spatial"]["keys"][0] == "domain"  # the map follows the domains
    html = open(res["report_html"]).read()
    assert "data:image/png;base64," in html
    obs = s.get("data").obs
    assert (obs["ground_truth"].astype(str) == truth.loc[obs.index]).all()
    wm = [m["gene"] for m in res["steps"][-1]["result"]["markers"]["WM"]]
    assert {"MOBP", "MBP", "PLP1", "MOG", "MAG"} & set(wm)
    assert "white matter" in res["answer"] and "WM" in res["answer"]


# ------------------------------------------------------------------ planner on real requests
class _Session:
    """The part of a Session the planner reads: dataset ids and the AnnData by id."""

    def __init__(self, adata):
        self.adata, self.dataset_ids = adata, ["data"]

    def get(self, dataset):
        return self.adata


def _plan(text, adata):
    from agent.planner import make_plan
    from tools.registry import all_tools

    p = make_plan(text, all_tools(), _Session(adata))
    return [(s["name"], {k: v for k, v in s["args"].items() if k != "dataset"}) for s in p.steps], p


@pytest.fixture(scope="module")
def merfish_ad(merfish):
    return ad.read_h5ad(merfish)


@pytest.fixture(scope="module")
def osmfish_ad(osmfish):
    return ad.read_h5ad(osmfish)


def test_numbers_inside_labels_are_not_arguments(osmfish_ad, merfish_ad):
    ent = extract("What are the top marker genes of Layer 6?", osmfish_ad)
    assert ent.numbers == [] and ("region", "Layer 6") in ent.categories
    steps, _ = _plan("What are the top marker genes of Layer 6?", osmfish_ad)
    assert steps == [("marker_genes", {"groupby": "region", "groups": ["Layer 6"]})]
    text = "Remove Astrocyte cells near OD Mature 2 cells: is Mlc1 predicted to go up or down in the OD Mature 2 cells?"
    steps, _ = _plan(text, merfish_ad)
    assert [n for n, _ in steps] == ["perturb_neighbourhood"]
    args = steps[0][1]
    assert "n_cells" not in args and "max_train_cells_per_type" not in args
    assert args["action"] == "remove" and args["genes"] == ["Mlc1"]
    # a number outside the label still counts
    assert extract("find 7 domains around Layer 6", osmfish_ad).numbers == [(7.0, "domains")]


def test_obs_names_are_extracted_and_planned(merfish_ad):
    ent = extract("Generate cell cell_6800 from its neighbours: which 10 genes should it express most?", merfish_ad)
    assert ent.cells == ["cell_6800"] and ent.unknown_genes == []
    steps, _ = _plan("Generate cell cell_6800 from its neighbours: which 10 genes should it express most?", merfish_ad)
    assert steps == [("generate_cell", {"cell": "cell_6800", "n_genes": 10})]
    steps, _ = _plan("Cell cell_8628 is missing: complete its cell sentence from the surrounding cells", merfish_ad)
    assert [n for n, _ in steps] == ["generate_cell"]  # not cell_sentences / neighbourhood_composition


def test_anchor_decides_target_and_centre(merfish_ad):
    steps, _ = _plan("remove Microglia near Astrocyte cells", merfish_ad)
    assert steps[0][1]["target_type"] == "Astrocyte" and steps[0][1]["perturb_type"] == "Microglia"
    steps, _ = _plan("How would Gda in Inhibitory cells change if the nearby Excitatory cells were removed?",
                     merfish_ad)
    assert steps[0][0] == "perturb_neighbourhood"
    assert (steps[0][1]["target_type"], steps[0][1]["perturb_type"]) == ("Inhibitory", "Excitatory")
    for q in ("Are Microglia or Pericytes cells found nearer to Astrocyte cells?",
              "Which sits closer to Astrocyte cells, Microglia or Inhibitory cells?"):
        steps, _ = _plan(q, merfish_ad)
        assert [n for n, _ in steps] == ["neighbourhood_composition"] and steps[0][1]["cell_type"] == "Astrocyte"


def test_region_composition_counts_another_column(osmfish_ad):
    steps, _ = _plan("Which cell type is most abundant in Layer 2-3 lateral?", osmfish_ad)
    assert steps == [("region_composition", {"label_key": "cell_type", "region_key": "region",
                                             "region": "Layer 2-3 lateral"})]
    steps, _ = _plan("What are the three most common cell types in the neighbourhood of Pyramidal L6 cells?",
                     osmfish_ad)
    assert [n for n, _ in steps] == ["neighbourhood_composition"]


def test_plain_questions_about_the_data(dlpfc_hvg300):
    a = ad.read_h5ad(dlpfc_hvg300)
    for q in ("How many genes were measured in this dataset?", "Which layer has the most spots?",
              "Which species does this tissue come from, human or mouse?",
              "Which technology produced this dataset: Visium, MERFISH or osmFISH?",
              "How many cortical layers are annotated in this tissue?"):
        steps, p = _plan(q, a)
        assert [n for n, _ in steps] == ["describe_dataset"] and p.problems == [], q
    steps, _ = _plan("Find 7 spatial domains and compare them with the annotated layers", a)
    assert [n for n, _ in steps] == ["find_domains"]
    # "which genes" about a group of the data is a marker question, not a gene-description search
    steps, _ = _plan("Which genes mark Layer1?", a)
    assert steps == [("marker_genes", {"groupby": "ground_truth", "groups": ["Layer1"]})]
    steps, _ = _plan("Which human genes are involved in myelination?", a)
    assert [n for n, _ in steps] == ["gene_search"]
    steps, _ = _plan("In which layer is PCP4 most specifically expressed?", a)
    assert steps == [("marker_genes", {"groupby": "ground_truth"})]


def test_describe_reports_organism_and_technology(dlpfc_hvg300):
    from tools.describe import DescribeParams, describe_dataset

    r = describe_dataset(ad.read_h5ad(dlpfc_hvg300), DescribeParams())
    assert "human" in r.organism and "Visium" in r.technology
    assert len(r.annotations["ground_truth"]) == 8  # all categories (7 layers and NA), not 12 at most


def test_numbered_labels_match_by_name():
    a = ad.AnnData(np.zeros((6, 2), dtype=np.float32))
    a.var_names = ["Gpsm1", "Nrsn1"]
    a.obs["ground_truth"] = ["1: Granular Cell Layer", "2: Mitral Cell Layer"] * 3
    ent = extract("What are the top marker genes of the granular cell layer?", a)
    assert ent.categories == [("ground_truth", "1: Granular Cell Layer")] and ent.numbers == []
    steps, _ = _plan("Which layer is Gpsm1 a marker of?", a)  # no column named: the main annotation
    assert steps == [("marker_genes", {"groupby": "ground_truth"})]


def test_narrator_keeps_rows_named_in_the_question():
    rows = [{"label": f"T{i}", "count": 30 - i} for i in range(30)]
    text = narrator.facts({"rows": rows, "markers": {f"G{i}": [{"gene": "A"}] for i in range(12)} | {
        "G12": [{"gene": "PLP1"}]}}, named=narrator.named_in("Where is PLP1, and how many T27?"))
    assert "T19" in text and "T20" not in text and "T27" in text  # 20 rows, and the one asked for
    assert "G12" in text and "G9" not in text
    assert "1: Granular" not in text and narrator.named_in("the granular cell layer")("1: Granular Cell Layer")
