"""The template narrator (offline) and the number check: every number in a narrative must
come from a logged tool result (or its arguments)."""
from __future__ import annotations

import math
import re

from prompts import load

LIST_MARK_RE = re.compile(r"^\s*\d+[.)]\s", re.M)
NUMBER_RE = re.compile(r"(?<![\w.])[-+]?\d+(?:,\d{3})*(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\w])")


def fmt(v) -> str:
    """A number as the narrator writes it (integers whole, floats to 4 significant digits)."""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int) or (isinstance(v, float) and v.is_integer() and abs(v) < 1e12):
        return str(int(v))
    return format(v, ".4g")


def _values(obj, out: list[float]) -> list[float]:
    if isinstance(obj, bool):
        return out
    if isinstance(obj, (int, float)):
        if math.isfinite(obj):
            out.append(float(obj))
    elif isinstance(obj, str):
        out += [float(x.replace(",", "")) for x in NUMBER_RE.findall(obj)]
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _values(k, out)
            _values(v, out)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _values(v, out)
    return out


def supported_values(steps: list[dict]) -> list[float]:
    """Every number that appears in the logged steps (results, arguments, errors)."""
    out: list[float] = []
    for s in steps:
        _values(s.get("result"), out)
        _values(s.get("args"), out)
        _values(s.get("error") or "", out)
    return out


def unsupported_numbers(text: str, steps: list[dict]) -> list[str]:
    """Numbers written in `text` that no logged tool result supports (rounding allowed)."""
    vals = supported_values(steps)
    bad = []
    text = LIST_MARK_RE.sub("", text)  # "1. ..." list numbering is not a claim
    for tok in NUMBER_RE.findall(text):
        x = float(tok.replace(",", ""))
        if "e" in tok.lower():
            tol = abs(x) * 5e-4
        else:
            dec = len(tok.split(".")[1]) if "." in tok else 0
            tol = 0.5 * 10 ** -dec + 1e-12
            if dec == 0 and abs(x) >= 10000:  # 4 significant digits of a large float
                tol = max(tol, abs(x) * 5e-4)
        if not any(abs(v - x) <= tol or abs(abs(v) - abs(x)) <= tol for v in vals):
            bad.append(tok)
    return list(dict.fromkeys(bad))


ROW_LIMIT = 20  # rows of a table (list of records) written out


def _mentions(obj, named) -> bool:
    """True if a label / gene of `obj` (a key, a string value or a record's values) is named in
    the question (`named(str) -> bool`)."""
    if named is None:
        return False
    if isinstance(obj, str):
        return named(obj)
    if isinstance(obj, dict):
        return any(named(str(k)) or _mentions(v, named) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return any(_mentions(v, named) for v in obj)
    return False


def _pick(items: list, limit: int, named, key=lambda x: x) -> tuple[list, bool]:
    """The first `limit` items plus later ones that mention a label or gene of the question."""
    if len(items) <= limit:
        return items, False
    extra = [x for x in items[limit:] if _mentions(key(x), named)]
    return items[:limit] + extra, True


def facts(result, depth: int = 0, limit: int = 8, named=None) -> str:
    """A short text of a tool result: scalars as `name = value`, small dicts and lists inline.
    Cut lists and dicts keep the entries that mention a label or gene named in the question
    (`named(str) -> bool`); tables (lists of records) show up to ROW_LIMIT rows."""
    if isinstance(result, dict):
        parts = []
        items = list(result.items())
        if depth > 0 and len(items) > limit and all(isinstance(v, (int, float)) for _, v in items):
            hi = max(items, key=lambda kv: kv[1])
            lo = min(items, key=lambda kv: kv[1])
            also = [f"{k}: {fmt(v)}" for k, v in items if k not in (hi[0], lo[0]) and _mentions(str(k), named)]
            return (f"largest {hi[0]} ({fmt(hi[1])}), smallest {lo[0]} ({fmt(lo[1])})"
                    + "".join(f", {a}" for a in also))
        shown, cut = _pick(items, limit if depth else 40, named, key=lambda kv: (kv[0], kv[1]))
        for k, v in shown:
            if v is None or v == {} or v == []:
                continue
            sep = " = " if depth == 0 else ": "
            parts.append(f"{k}{sep}{facts(v, depth + 1, limit, named)}")
        more = ", ..." if depth and cut else ""
        return ("; ".join(parts) if depth == 0 else "{" + ", ".join(parts) + more + "}")
    if isinstance(result, (list, tuple)):
        rows = bool(result) and all(isinstance(v, dict) for v in result)
        shown, cut = _pick(list(result), max(limit, ROW_LIMIT) if rows else limit, named)
        return "[" + ", ".join(facts(v, depth + 1, limit, named) for v in shown) + (", ..." if cut else "") + "]"
    if isinstance(result, (int, float)) and not isinstance(result, bool):
        return fmt(result)
    return str(result)


def named_in(question: str):
    """A test `named(label) -> bool`: is the label (a category, a gene; a numbered label
    '1: Granular Cell Layer' also by its name) mentioned in the question?"""
    from agent.entities import _find_label, label_names

    q = question or ""

    def named(label: str) -> bool:
        label = str(label)
        return len(label) <= 60 and any(_find_label(n, q) for n in label_names(label))

    return named


def narrate(question: str, steps: list[dict], problems: list[str], notes: list[str],
            capabilities: list[str], stopped: str | None = None) -> str:
    """The offline narrative from templates in prompts/agent_narrator_*.txt."""
    paras = []
    if "empty" in problems:
        return load("agent_narrator_empty").strip()
    if "no_data" in problems:
        return load("agent_narrator_no_data").strip()
    if "not_understood" in problems:
        caps = load("agent_planner").format(capabilities="\n".join(f"- {c}" for c in capabilities))
        text = load("agent_narrator_not_understood").format(capabilities=caps.strip()).strip()
        return "\n\n".join([text] + notes)
    named = named_in(question)
    if steps:
        paras.append(load("agent_narrator_intro").format(
            tools=", ".join(dict.fromkeys(s["name"] for s in steps))).strip())
    for i, s in enumerate(steps):
        retried = any(t["ok"] and t["name"] == s["name"] for t in steps[i + 1:])
        if not s["ok"] and retried:
            paras.append(load("agent_narrator_step_retried").format(tool=s["name"], error=s["error"]).strip())
            continue
        if s["ok"]:
            line = load("agent_narrator_step_ok").format(tool=s["name"], facts=facts(s["result"], named=named))
            if s.get("artefacts"):
                line += " " + load("agent_narrator_artefacts").format(
                    files=", ".join(s["artefacts"])).strip()
        else:
            line = load("agent_narrator_step_error").format(tool=s["name"], error=s["error"])
        paras.append(line.strip())
    for p in problems:
        paras.append(load("agent_narrator_problem").format(problem=p).strip())
    paras += notes
    if stopped:
        paras.append(load("agent_narrator_stopped").format(reason=stopped).strip())
    return "\n\n".join(paras)
