"""`tissuetalk ask` from the command line, and the cost of `--help`."""
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLI = ["-m", "agent.cli"]


def _ask(args, tmp_path):
    env = {**os.environ, "TISSUETALK_HOME": str(tmp_path / "home"), "PYTHONPATH": str(REPO),
           "TISSUETALK_MODEL": "offline"}
    return subprocess.run([sys.executable, *CLI, "ask", *args], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=600)


def test_ask_demo_json(tmp_path):
    import anndata as ad

    p = _ask(["--demo", "--json", "describe the data"], tmp_path)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert set(out) == {"answer", "report_md", "report_html", "session", "tool_calls", "numbers"}
    sdir = tmp_path / "home" / "sessions" / out["session"]
    demo = ad.read_h5ad(next(sdir.glob("*demo*.h5ad")))
    assert out["numbers"]["describe_dataset.n_obs"] == demo.n_obs
    assert out["numbers"]["describe_dataset.n_vars"] == demo.n_vars
    assert out["tool_calls"] == [{"name": "describe_dataset", "args": {"dataset": "data"}, "ok": True,
                                  "seconds": out["tool_calls"][0]["seconds"]}]
    assert Path(out["report_md"]).is_file() and Path(out["report_html"]).is_file()
    assert str(demo.n_obs) in out["answer"]
    log = [json.loads(x) for x in (sdir / "provenance.jsonl").read_text().splitlines()]
    assert log[0]["tool"] == "describe_dataset" and log[0]["result"]["n_obs"] == demo.n_obs


def test_ask_bad_path_and_bad_model_are_one_line_errors(tmp_path):
    p = _ask(["--data", str(tmp_path / "missing.h5ad"), "describe the data"], tmp_path)
    assert p.returncode == 2 and p.stderr.strip().startswith("error: ") and "does not exist" in p.stderr
    p = _ask(["--model", "gpt4", "describe the data"], tmp_path)
    assert p.returncode == 2 and "model spec 'gpt4' not understood" in p.stderr
    p = _ask(["--model", "openai:gpt-4o-mini", "describe the data"], tmp_path)  # no key in env
    env_has_key = bool(os.environ.get("OPENAI_API_KEY"))
    assert env_has_key or (p.returncode == 2 and "OPENAI_API_KEY is not set" in p.stderr)


def test_command_modules_stay_light():
    code = ("import argparse, sys\n"
            "from agent.commands import ask, chat\n"
            "for m in (ask, chat): m.add_arguments(argparse.ArgumentParser())\n"
            "heavy = [m for m in ('anndata', 'scanpy', 'langgraph', 'langchain_core', 'openai', 'torch')"
            " if m in sys.modules]\n"
            "print(heavy)\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]"
