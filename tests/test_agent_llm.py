"""The LLM path end to end: the real openai / anthropic SDKs (through langchain-openai /
langchain-anthropic) against a local server that replays scripted model turns."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fake_llm_server import FakeLLM

from agent.runner import Agent
from agent.session import Session

KEY = "sk-tissuetalk-SECRET-0123456789"
REPO = Path(__file__).resolve().parents[1]
CLI = ["-m", "agent.cli"]


def script():
    return [
        {"error": 500},  # retried by the SDK
        {"error": 429},  # retried by the SDK
        {"tool_calls": [{"name": "describe_dataset", "args": {"dataset": "data", "n_genes": 0}}]},  # invalid
        {"tool_calls": [{"name": "describe_dataset", "args": {"dataset": "data", "n_genes": 4}}]},  # corrected
        {"text": "The slice has {n} spots and {g} genes, in about 42 layers."},
    ]


def _env(monkeypatch, url):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", url + "/v1")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", url)


def _run(tmp_path, small_h5ad, spec, turns, stream=False, **kw):
    s = Session.open(tmp_path / "session", extra_roots=[small_h5ad])
    s.load_dataset(small_h5ad)
    n, g = s.get("data").shape
    for t in turns:
        if "text" in t:
            t["text"] = t["text"].format(n=n, g=g)
    a = Agent(s, spec, **kw)
    try:
        if stream:
            events = []
            res = a.ask("describe the tissue", on_event=lambda k, p: events.append((k, p)))
            return a, res, events
        return a, a.ask("describe the tissue"), None
    finally:
        a.close()


def _tool_results(body, anthropic):
    """Tool results the agent sent back, in order."""
    out = []
    for m in body["messages"]:
        if anthropic and isinstance(m["content"], list):
            out += [b["content"] for b in m["content"] if b.get("type") == "tool_result"]
        elif m["role"] == "tool":
            out.append(m["content"])
    return [c if isinstance(c, str) else json.dumps(c) for c in out]


@pytest.mark.parametrize("provider", ["openai", "anthropic", "openai-compatible"])
@pytest.mark.parametrize("stream", [False, True])
def test_scripted_model_end_to_end(tmp_path, small_h5ad, monkeypatch, provider, stream):
    turns = script()
    with FakeLLM(turns) as srv:
        _env(monkeypatch, srv.url)
        spec = (f"openai-compatible:{srv.url}/v1#fake-model" if provider == "openai-compatible"
                else f"{provider}:fake-model")
        a, res, events = _run(tmp_path, small_h5ad, spec, turns, stream=stream)
    anthropic = provider == "anthropic"
    n, g = a.session.get("data").shape
    reqs = srv.requests
    assert len(reqs) == 5 and {r["path"] for r in reqs} == {"/v1/messages" if anthropic else "/v1/chat/completions"}
    assert all(r["body"].get("stream", False) == stream for r in reqs)
    # every registered tool is offered with its pydantic schema
    tools = reqs[0]["body"]["tools"]
    names = [t["name"] if anthropic else t["function"]["name"] for t in tools]
    assert set(a.specs) == set(names)
    desc = next(t for t in tools if (t["name"] if anthropic else t["function"]["name"]) == "describe_dataset")
    params = desc["input_schema"] if anthropic else desc["function"]["parameters"]
    assert params["properties"]["n_genes"]["minimum"] == 1
    # the validation error went back to the model, then the corrected call's result
    sent = _tool_results(reqs[4]["body"], anthropic)
    assert len(sent) == 2
    assert "invalid arguments for describe_dataset" in sent[0] and "n_genes" in sent[0]
    assert json.loads(sent[1])["n_obs"] == n
    # the key went only to the provider (and only to the real providers)
    auth = reqs[0]["headers"].get("authorization") or reqs[0]["headers"].get("x-api-key", "")
    assert (KEY in auth) == (provider != "openai-compatible")
    assert [(c["name"], c["ok"]) for c in res["tool_calls"]] == [("describe_dataset", False),
                                                                   ("describe_dataset", True)]
    assert res["answer"].startswith(f"The slice has {n} spots and {g} genes")
    assert res["unsupported"] == ["42"]  # the invented number is flagged, in the answer too
    assert res["answer"].endswith("Warning: these numbers appear in no tool result: 42.")
    md = Path(res["report_md"]).read_text()
    assert "appear in no tool result: 42" in md and "n_genes: Input should be greater" in md
    if stream:
        kinds = [e[0] for e in events]
        assert kinds.count("tool_start") == 2 and "token" in kinds
        streamed = "".join(e[1] for e in events if e[0] == "token").strip()
        assert streamed == f"The slice has {n} spots and {g} genes, in about 42 layers."


def test_malformed_json_arguments_go_back_to_the_model(tmp_path, small_h5ad, monkeypatch):
    turns = [{"tool_calls": [{"name": "describe_dataset", "args": '{"dataset": "data", '}]},
             {"tool_calls": [{"name": "describe_dataset", "args": {"dataset": "data"}}]},
             {"text": "Described {n} spots."}]
    with FakeLLM(turns) as srv:
        _env(monkeypatch, srv.url)
        a, res, _ = _run(tmp_path, small_h5ad, "openai:fake-model", turns)
    sent = _tool_results(srv.requests[1]["body"], False)
    assert sent and "not valid JSON" in sent[0]
    assert [c["ok"] for c in res["tool_calls"]] == [False, True] and res["unsupported"] == []


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_provider_keeps_failing_gives_a_clear_message(tmp_path, small_h5ad, monkeypatch, provider):
    turns = [{"error": 503}] * 3
    with FakeLLM(turns) as srv:
        _env(monkeypatch, srv.url)
        a, res, _ = _run(tmp_path, small_h5ad, f"{provider}:fake-model", turns, max_retries=2)
    assert len(srv.requests) == 3  # first try + 2 retries
    assert "kept failing with a server error (503) after retries" in res["answer"]
    assert res["tool_calls"] == [] and Path(res["report_html"]).exists()


def test_cli_json_and_key_never_written(tmp_path, small_h5ad):
    turns = [{"tool_calls": [{"name": "describe_dataset", "args": {"dataset": "data"}}]},
             {"text": "Done."}]
    with FakeLLM(turns) as srv:
        env = {**os.environ, "OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": srv.url + "/v1",
               "TISSUETALK_HOME": str(tmp_path / "home"), "PYTHONPATH": str(REPO)}
        env.pop("TISSUETALK_MODEL", None)
        p = subprocess.run([sys.executable, *CLI, "ask", "--data", str(small_h5ad), "--json",
                            "--model", "openai:fake-model", "describe the tissue"],
                           capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert set(out) == {"answer", "report_md", "report_html", "session", "tool_calls", "numbers"}
    assert out["answer"] == "Done." and out["tool_calls"][0]["name"] == "describe_dataset"
    import anndata as ad

    assert out["numbers"]["describe_dataset.n_obs"] == ad.read_h5ad(small_h5ad).n_obs
    assert KEY in srv.requests[0]["headers"]["authorization"]
    session_dir = tmp_path / "home" / "sessions" / out["session"]
    files = [f for f in session_dir.rglob("*") if f.is_file()]
    assert any(f.name == "checkpoint.sqlite" for f in files) and any(f.suffix == ".html" for f in files)
    assert KEY not in p.stdout + p.stderr
    for f in files:
        assert KEY.encode() not in f.read_bytes(), f


def test_answer_without_tools_is_marked(tmp_path, small_h5ad, monkeypatch):
    turns = [{"text": "There are 12 layers:\n1. one\n2. two"}]
    with FakeLLM(turns) as srv:
        _env(monkeypatch, srv.url)
        a, res, _ = _run(tmp_path, small_h5ad, "anthropic:fake-model", turns)
    assert res["unsupported"] == ["12"]  # list numbering is not a claim
    assert "not backed by any successful tool result" in res["answer"]
    turns = [{"text": "Hello! Ask me about the tissue."}]
    with FakeLLM(turns) as srv:
        _env(monkeypatch, srv.url)
        a, res, _ = _run(tmp_path / "b", small_h5ad, "openai:fake-model", turns)
    assert res["answer"] == "Hello! Ask me about the tissue." and res["unsupported"] == []
