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
