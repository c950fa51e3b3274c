"""Per-request reports: Markdown and a self-contained HTML page (figures embedded as base64,
every piece of text html-escaped)."""
from __future__ import annotations

import base64
import html
import json
import time

from agent.narrator import facts
from tools.io import write_text

IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml"}


def _args(a: dict) -> str:
    return json.dumps(a, default=str, ensure_ascii=False)


def to_markdown(turn: dict) -> str:
    lines = ["# tissuetalk report", "", f"**Question:** {turn['question']}", "",
             f"**Model:** {turn['model']}  ", f"**Session:** {turn['session']}", "", "## Plan", ""]
    plan = [f"{i}. `{s['name']}` {_args(s['args'])}" for i, s in enumerate(turn["steps"], 1)]
    lines += plan or ["(no tool calls)"]
    lines += ["", "## Steps", ""]
    for i, s in enumerate(turn["steps"], 1):
        status = "ok" if s["ok"] else "failed"
        lines += [f"### {i}. {s['name']} ({status}, {s['seconds']:.2f} s)", "",
                  f"Arguments: `{_args(s['args'])}`", ""]
        lines.append(f"Result: {facts(s['result'])}" if s["ok"] else f"Error: {s['error']}")
        lines.append("")
        for a in s.get("artefacts", []):
            suffix = "." + a.rsplit(".", 1)[-1].lower() if "." in a else ""
            lines.append(f"![{a}](../{a})" if suffix in IMAGE_TYPES else f"File: `{a}`")
        lines.append("")
    lines += ["## Answer", "", turn["answer"], ""]
    if turn.get("unsupported"):
        lines += ["## Number check", "",
                  "**Warning:** these numbers in the answer appear in no tool result: "
                  + ", ".join(turn["unsupported"]), ""]
    else:
        lines += ["## Number check", "", "Every number in the answer comes from a logged tool result.", ""]
    return "\n".join(lines)


def to_html(turn: dict, session_dir) -> str:
    e = html.escape
    body = [f"<h1>tissuetalk report</h1><p><b>Question:</b> {e(turn['question'])}</p>",
            f"<p><b>Model:</b> {e(turn['model'])}<br><b>Session:</b> {e(turn['session'])}</p>",
            "<h2>Plan</h2><ol>"]
    body += [f"<li><code>{e(s['name'])}</code> {e(_args(s['args']))}</li>" for s in turn["steps"]]
    body.append("</ol><h2>Steps</h2>")
    for i, s in enumerate(turn["steps"], 1):
        status = "ok" if s["ok"] else "failed"
        body.append(f"<h3>{i}. {e(s['name'])} ({status}, {s['seconds']:.2f} s)</h3>")
        body.append(f"<p>Arguments: <code>{e(_args(s['args']))}</code></p>")
        text = f"Result: {facts(s['result'])}" if s["ok"] else f"Error: {s['error']}"
        body.append(f"<p>{e(text)}</p>")
        for a in s.get("artefacts", []):
            suffix = "." + a.rsplit(".", 1)[-1].lower() if "." in a else ""
            path = session_dir / a
            if suffix in IMAGE_TYPES and path.is_file():
                data = base64.b64encode(path.read_bytes()).decode()
                body.append(f'<figure><img alt="{e(a)}" src="data:{IMAGE_TYPES[suffix]};base64,{data}">'
                            f"<figcaption>{e(a)}</figcaption></figure>")
            else:
                body.append(f"<p>File: <code>{e(a)}</code></p>")
    paras = "".join(f"<p>{e(p)}</p>" for p in turn["answer"].split("\n\n"))
    body.append(f"<h2>Answer</h2>{paras}<h2>Number check</h2>")
    if turn.get("unsupported"):
        body.append('<p class="warn"><b>Warning:</b> these numbers in the answer appear in no tool '
                    f"result: {e(', '.join(turn['unsupported']))}</p>")
    else:
        body.append("<p>Every number in the answer comes from a logged tool result.</p>")
    style = ("body{font-family:sans-serif;max-width:60em;margin:2em auto;line-height:1.4}"
             "img{max-width:100%}code{background:#f4f4f4}.warn{color:#a00}")
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>tissuetalk report</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>")


def write_reports(turn: dict, session) -> tuple[str, str]:
    """Write reports/<stamp>.md and .html atomically; returns their paths."""
    stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{turn['index']:03d}"
    md = session.dir / "reports" / f"{stamp}.md"
    ht = session.dir / "reports" / f"{stamp}.html"
    write_text(md, to_markdown(turn))
    write_text(ht, to_html(turn, session.dir))
    return str(md), str(ht)
