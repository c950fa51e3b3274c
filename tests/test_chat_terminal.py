"""Drive `tissuetalk chat` in a real terminal (pexpect), as a person would: ask, /tools,
interrupt a long tool with Ctrl-C, /quit, resume, kill the process, resume again."""
import os
import signal
import sys
from pathlib import Path

import pytest

pexpect = pytest.importorskip("pexpect", reason="pexpect is needed to drive the terminal")

REPO = Path(__file__).resolve().parents[1]
CLI = ["-m", "agent.cli"]
PROMPT = "you> "


def spawn(args, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")]),
           "TISSUETALK_TOOL_MODULES": "test_agent_toolkit", "TISSUETALK_HOME": str(tmp_path / "home"),
           "TISSUETALK_MODEL": "offline", "PYTHONUNBUFFERED": "1"}
    for k in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY"):
        env.pop(k, None)
    return pexpect.spawn(sys.executable, [*CLI, "chat", *args], env=env, cwd=str(tmp_path),
                         encoding="utf-8", timeout=120, dimensions=(50, 200))


def test_chat_like_a_person(tmp_path, small_h5ad):
    import anndata as ad

    n_obs = ad.read_h5ad(small_h5ad).n_obs
    sdir = tmp_path / "session"
    c = spawn(["--data", str(small_h5ad), "--session-dir", str(sdir), "--progress-every", "1"], tmp_path)
    c.expect("datasets: data")
    c.expect(PROMPT)
    c.sendline("describe the data")
    c.expect(r"-> describe_dataset")
    c.expect(r"<- describe_dataset ok")
    c.expect(f"n_obs = {n_obs};")
    c.expect(r"\(report: .*\.md\)")
    c.expect(PROMPT)
    c.sendline("/tools")
    c.expect("describe_dataset: Describe a dataset")
    c.expect("nap: Sleep")
    c.expect(PROMPT)
    c.sendline("take a nap")
    c.expect("-> nap")
    c.expect(r"still running nap \(\d+ s\)")
    c.sendintr()  # Ctrl-C in the terminal
    c.expect("<- nap failed: interrupted")
    c.expect("a tool was interrupted")
    c.expect(PROMPT)
    c.sendline("/history")
    c.expect("you: describe the data")
    c.expect(PROMPT)
    c.sendline("/quit")
    c.expect("resume with: tissuetalk chat --resume")
    c.expect(pexpect.EOF)
    c.close()
    assert c.exitstatus == 0
    assert "napped" not in ad.read_h5ad(sdir / "datasets" / "data.h5ad").obs  # interrupted: nothing saved

    # resume, start a long tool and kill the process in the middle of it
    c = spawn(["--resume", str(sdir)], tmp_path)
    c.expect(r"resumed: \d+ messages")
    c.expect(PROMPT)
    c.sendline("take a nap")
    c.expect("-> nap")
    c.kill(signal.SIGKILL)
    c.close()

    # resume again: the conversation and the data are intact
    c = spawn(["--resume", str(sdir)], tmp_path)
    c.expect(PROMPT)
    c.sendline("/history")
    c.expect("you: describe the data")
    c.expect("you: take a nap")
    c.expect(PROMPT)
    c.sendline("list datasets")
    c.expect(r"<- list_datasets ok")
    c.expect(PROMPT)
    c.sendline("/data")
    c.expect(f"data: {n_obs} x")
    c.expect(PROMPT)
    c.sendeof()
    c.expect(pexpect.EOF)
    c.close()
    assert c.exitstatus == 0
