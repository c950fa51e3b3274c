"""Sessions: allowed roots, atomic datasets, provenance, failing / interrupted tools, resume."""
import base64
import json

import anndata as ad
import pytest

from agent.runner import Agent
from agent.session import Session
from agent.toolset import discover, execute
from tools.errors import DataError, UnknownKeyError


def _session(tmp_path, src):
    s = Session.open(tmp_path / "session", extra_roots=[src])
    s.load_dataset(src)
    return s


def test_path_outside_allowed_roots_is_rejected(tmp_path, small_h5ad):
    s = Session.open(tmp_path / "session")  # the input file was not given with --data
    with pytest.raises(DataError, match="outside the allowed data folders"):
        s.load_dataset(small_h5ad)
    a = Agent(s, "offline")
    res = a.ask(f"load {small_h5ad}")
    a.close()
    assert [(c["name"], c["ok"]) for c in res["tool_calls"]] == [("load_data", False)]
    assert "outside the allowed data folders" in res["answer"]
    assert s.dataset_ids == []
    s.allow(small_h5ad.parent)  # like --data: now it is allowed
    assert s.load_dataset(small_h5ad) == "data"


def test_unknown_dataset_and_tool_are_tool_errors(tmp_path, small_h5ad):
    s = _session(tmp_path, small_h5ad)
    specs, _ = discover()
    step = execute(s, specs, "describe_dataset", {"dataset": "dat"})
    assert not step["ok"] and "dataset 'dat' is not loaded" in step["error"] and "data" in step["error"]
    step = execute(s, specs, "describe_datasets", {})
    assert not step["ok"] and "did you mean: describe_dataset" in step["error"]
    with pytest.raises(UnknownKeyError):
        s.get("nope")
    log = [json.loads(x) for x in (s.dir / "provenance.jsonl").read_text().splitlines()]
    assert [r["ok"] for r in log] == [False, False] and log[0]["args"] == {"dataset": "dat"}


def test_input_file_untouched_and_dataset_saved_atomically(tmp_path, small_h5ad, test_tools):
    before = small_h5ad.read_bytes()
    s = _session(tmp_path, small_h5ad)
    a = Agent(s, "offline")
    res = a.ask("flag spots")
    a.close()
    assert res["tool_calls"][0]["ok"]
    assert small_h5ad.read_bytes() == before
    saved = ad.read_h5ad(s.dir / "datasets" / "data.h5ad")
    assert int(saved.obs["flag"].sum()) == res["numbers"]["flag_spots.n_flagged"]
    assert not list((s.dir / "datasets").glob(".*"))  # no temporary files left


@pytest.mark.parametrize("request_text, expect", [
    ("stop me", "interrupted"), ("explode", "unexpected ValueError in explode: bug in the tool")])
def test_failing_or_interrupted_tool_keeps_the_session(tmp_path, small_h5ad, test_tools, request_text, expect):
    s = _session(tmp_path, small_h5ad)
    a = Agent(s, "offline")
    res = a.ask(request_text)
    assert res["tool_calls"][0]["ok"] is False
    assert expect in res["answer"]
    assert "half" not in s.get("data").obs  # half-made in-memory changes dropped
    assert "half" not in ad.read_h5ad(s.dir / "datasets" / "data.h5ad").obs
    res = a.ask("describe the data")  # the session goes on
    a.close()
    assert res["tool_calls"][0]["ok"] and res["numbers"]["describe_dataset.n_obs"] == s.get("data").n_obs
    prov = s.provenance()
    assert [p["tool"] for p in prov][-2:] == [request_text.replace(" ", "_"), "describe_dataset"]


def test_broken_tool_module_is_reported_not_fatal(tmp_path, small_h5ad, monkeypatch):
    monkeypatch.setenv("TISSUETALK_TOOL_MODULES", "tools.no_such_module_xyz")
    a = Agent(_session(tmp_path, small_h5ad), "offline")
    assert "tools.no_such_module_xyz" in a.import_errors
    assert a.ask("describe the data")["tool_calls"][0]["ok"]
    a.close()


def test_resume_continues_the_conversation(tmp_path, small_h5ad):
    s = _session(tmp_path, small_h5ad)
    a = Agent(s, "offline")
    a.ask("describe the data")
    a.close()
    s2 = Session.open(resume=str(s.dir))
    b = Agent(s2, "offline")
    msgs = b.history()
    assert msgs[0].content == "describe the data" and msgs[1].tool_calls[0]["name"] == "describe_dataset"
    b.ask("list datasets")
    assert [m.content for m in b.history() if m.type == "human"] == ["describe the data", "list datasets"]
    b.close()
    with pytest.raises(UnknownKeyError, match="no session"):
        Session.open(resume=str(tmp_path / "nothing-here"))


def test_report_escapes_text_and_embeds_figures(tmp_path, small_h5ad, test_tools):
    a = Agent(_session(tmp_path, small_h5ad), "offline")
    res = a.ask("<script>alert(1)</script> histogram of counts")
    a.close()
    step = res["steps"][0]
    assert step["ok"] and step["artefacts"] == ["artefacts/counts_hist.png"]
    html = open(res["report_html"], encoding="utf-8").read()
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    png = (a.session.dir / "artefacts" / "counts_hist.png").read_bytes()
    assert f"data:image/png;base64,{base64.b64encode(png).decode()}" in html
    md = open(res["report_md"], encoding="utf-8").read()
    assert "## Plan" in md and "plot_counts" in md and "![artefacts/counts_hist.png]" in md
    assert "Every number in the answer comes from a logged tool result" in md


def test_resume_by_id_and_repair_of_an_interrupted_history(tmp_path, monkeypatch):
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

    from agent.graph import repair

    monkeypatch.setenv("TISSUETALK_HOME", str(tmp_path / "home"))
    s = Session.open()
    assert s.dir == tmp_path / "home" / "sessions" / s.id
    assert Session.open(resume=s.id).dir == s.dir
    # killed after the model asked for a tool: the provider must still see an answered call
    msgs = [HumanMessage("q"), AIMessage("", tool_calls=[{"name": "t", "args": {}, "id": "c1"}]),
            HumanMessage("next"), ToolMessage("late", tool_call_id="zz")]
    fixed = repair(msgs)
    assert [m.type for m in fixed] == ["human", "ai", "tool", "human"]
    assert fixed[2].tool_call_id == "c1" and "interrupted" in fixed[2].content


def test_time_budget(tmp_path, small_h5ad):
    a = Agent(_session(tmp_path, small_h5ad), "offline", max_seconds=0)
    res = a.ask("describe the data")
    a.close()
    assert res["tool_calls"] == [] and "the time budget was reached" in res["answer"]
