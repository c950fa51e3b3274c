"""Question files: loading and checking.

A suite is a ``.jsonl`` file (one question per line; blank lines and lines starting with ``#``
are skipped), a ``.json`` file (one question or a list), or a folder of such files (read in name
order; ``*.json`` files that are not questions, such as ``kb_genes.json``, are skipped by name).

A question::

    {"id": "markers.dlpfc_151673.top.wm",      unique
     "category": "markers",                     data | domains | markers | composition |
                                                generation | enrichment | knowledge
     "family": "top_markers",                   the builder family (free text for hand-written)
     "dataset": "dlpfc_151673",                 a name under the data root (+ .h5ad), a path, or null
     "question": "Which genes mark WM?",        {knowledge} / {data_root} are filled in by the runner
     "answer": [...],                           the ground truth (type depends on the grader)
     "grade": {"kind": "precision_at_k", "k": 5, "min": 0.6,
               "evidence": {"from": "group_markers", "group": "WM"}},
     "needs_kb": "human",                       optional: the knowledge store must hold this species
     "notes": "..."}                            optional: how the truth was computed

A line or file that does not parse, or a question that fails these checks, becomes a
:class:`SuiteError` (reported as an ``error`` result) and the rest of the suite still runs.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

CATEGORIES = ("data", "domains", "markers", "composition", "generation", "enrichment", "knowledge")
NOT_QUESTIONS = {"kb_genes.json"}
DEFAULT_SUITE = Path(__file__).resolve().parent / "questions"


@dataclass
class Question:
    id: str
    category: str
    question: str
    grade: dict
    answer: object = None
    family: str = ""
    dataset: str | None = None
    needs_kb: str | None = None
    notes: str = ""
    tags: list = field(default_factory=list)
    source: str = ""

    def as_dict(self) -> dict:
        return {"id": self.id, "category": self.category, "family": self.family, "dataset": self.dataset,
                "question": self.question, "answer": self.answer, "grade": self.grade,
                "needs_kb": self.needs_kb, "notes": self.notes, "tags": self.tags}


@dataclass
class SuiteError:
    id: str
    source: str
    reason: str
    category: str = "invalid"


def check(d, source: str) -> Question:
    """A Question from a parsed dict; ValueError naming the problem."""
    if not isinstance(d, dict):
        raise ValueError(f"a question must be a JSON object, got {type(d).__name__}")
    missing = [k for k in ("id", "category", "question", "grade") if k not in d]
    if missing:
        raise ValueError(f"missing field(s) {', '.join(missing)}")
    if not isinstance(d["id"], str) or not d["id"]:
        raise ValueError("id must be a non-empty string")
    if not isinstance(d["question"], str) or not d["question"].strip():
        raise ValueError("question must be a non-empty string")
    if not isinstance(d["grade"], dict) or "kind" not in d["grade"]:
        raise ValueError("grade must be an object with a 'kind'")
    from evals.graders import GRADERS

    kinds = [d["grade"]["kind"]] + [p.get("kind") for p in d["grade"].get("parts", []) if isinstance(p, dict)]
    bad = [k for k in kinds if k not in GRADERS]
    if bad:
        raise ValueError(f"unknown grader kind {bad[0]!r} (known: {', '.join(GRADERS)})")
    if d.get("dataset") is not None and not isinstance(d["dataset"], str):
        raise ValueError("dataset must be a string or null")
    known = set(Question.__dataclass_fields__) - {"source"}
    extra = set(d) - known
    if extra:
        raise ValueError(f"unknown field(s) {', '.join(sorted(extra))}")
    return Question(**{k: v for k, v in d.items() if k in known}, source=source)


def _file_items(path: Path):
    """(source, parsed dict or exception) per question in one file."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        yield str(path), e
        return
    if path.suffix == ".jsonl":
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            try:
                yield f"{path.name}:{i}", json.loads(line)
            except json.JSONDecodeError as e:
                yield f"{path.name}:{i}", ValueError(f"does not parse as JSON: {e}")
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            yield path.name, ValueError(f"does not parse as JSON: {e}")
            return
        for i, d in enumerate(data if isinstance(data, list) else [data]):
            yield f"{path.name}[{i}]", d


def suite_files(path) -> list[Path]:
    p = Path(path)
    if p.is_dir():
        return sorted(f for f in p.iterdir() if f.suffix in (".jsonl", ".json") and f.name not in NOT_QUESTIONS)
    return [p]


def load_suite(path=None) -> tuple[list[Question], list[SuiteError]]:
    """All questions of a file or folder, and the errors of those that could not be read."""
    path = Path(path) if path else DEFAULT_SUITE
    if not path.exists():
        return [], [SuiteError(str(path), str(path), f"suite '{path}' does not exist")]
    questions, errors, seen = [], [], set()
    for f in suite_files(path):
        for source, item in _file_items(f):
            if isinstance(item, Exception):
                errors.append(SuiteError(source, source, str(item)))
                continue
            try:
                qn = check(item, source)
            except ValueError as e:
                qid = item.get("id") if isinstance(item, dict) and isinstance(item.get("id"), str) else source
                cat = item.get("category", "invalid") if isinstance(item, dict) else "invalid"
                errors.append(SuiteError(qid, source, f"invalid question: {e}", str(cat)))
                continue
            if qn.id in seen:
                errors.append(SuiteError(qn.id, source, f"duplicate id '{qn.id}'", qn.category))
                continue
            seen.add(qn.id)
            questions.append(qn)
    return questions, errors


def write_jsonl(path, questions: list[dict]) -> None:
    """Write questions (dicts) one per line, atomically."""
    from tools.io import write_text

    write_text(Path(path), "".join(json.dumps(x, ensure_ascii=False, default=_plain) + "\n"
                                          for x in questions))


def _plain(v):
    import numpy as np

    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")
