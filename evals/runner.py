"""Run the suite: each question goes through the same entry point as `tissuetalk ask` (a fresh
session with the question's dataset loaded, then ``Agent(session, model).ask(question)``), is
graded (evals/graders.py), and ends up as one result record. The run never stops for one bad
question: an unreadable question, a missing dataset, an agent crash or an ungradable answer is an
``error`` record with the reason.

Sessions go to ``<out>/sessions/<question id>`` (kept for questions that did not pass, removed for
the others unless ``keep_sessions``); user data is only read. The knowledge questions need a gene
store: :func:`ensure_kb` builds a small one (the genes listed in the suite's ``kb_genes.json``)
from the shared NCBI descriptions into a cache folder once, and the agent finds it through
``$TISSUETALK_HOME/kb`` for the duration of the run.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from evals.suite import DEFAULT_SUITE, Question, SuiteError


@dataclass
class RunConfig:
    model: str = "offline"
    data_root: str | None = None
    knowledge_root: str | None = None
    out: str | None = None
    max_steps: int = 12
    timeout: float = 600.0
    keep_sessions: bool = False
    kb_home: str | None = None  # folder whose kb/ holds the eval gene store
    env: dict = field(default_factory=dict)


def default_data_root() -> Path:
    """$TISSUETALK_DATA/spatial, else ../shared/data/spatial beside the repository."""
    env = os.environ.get("TISSUETALK_DATA")
    if env:
        return Path(env.split(os.pathsep)[0]).expanduser() / "spatial"
    return Path(__file__).resolve().parents[1].parent / "shared" / "data" / "spatial"


def resolve_dataset(name: str, data_root) -> Path | None:
    """A dataset name (`dlpfc_151673` -> <root>/dlpfc_151673.h5ad) or a path; None if absent."""
    cands = [Path(name).expanduser()]
    if data_root:
        root = Path(data_root).expanduser()
        cands += [root / name, root / f"{name}.h5ad"]
    for p in cands:
        if p.is_file():
            return p.resolve()
    return None


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", s)[:120]


def needs_obs(grade: dict) -> bool:
    return grade.get("kind") == "ari" or any(needs_obs(p) for p in grade.get("parts", []) if isinstance(p, dict))


def fill(text: str, cfg: RunConfig) -> str:
    """Replace {knowledge} and {data_root} in a question's text."""
    return (text.replace("{knowledge}", str(cfg.knowledge_root or "knowledge"))
            .replace("{data_root}", str(cfg.data_root or ".")))


# ------------------------------------------------------------------------------- one question
def run_question(q: Question, cfg: RunConfig) -> dict:
    """Ask one question, grade it; never raises."""
    from evals.graders import ERROR, Grade, Response, grade

    t0 = time.time()
    rec = {"id": q.id, "category": q.category, "family": q.family, "dataset": q.dataset,
           "question": fill(q.question, cfg), "answer": q.answer, "status": ERROR, "reason": "",
           "claimed": None, "source": None, "score": None, "seconds": 0.0, "n_tool_calls": 0,
           "tools": [], "failed_tools": [], "answer_text": "", "session": None}
    path = None
    if q.dataset:
        path = resolve_dataset(q.dataset, cfg.data_root)
        if path is None:
            rec["reason"] = f"dataset '{q.dataset}' not found under {cfg.data_root}"
            return rec
    sdir = Path(cfg.out) / "sessions" / _slug(q.id)
    shutil.rmtree(sdir, ignore_errors=True)
    try:
        with contextlib.redirect_stdout(sys.stderr):  # tools that print must not spoil --json
            res, obs, vocab = _ask(rec["question"], path, sdir, cfg)
    except Exception as e:  # the agent or a tool crashed: an error, and the run goes on
        rec.update(reason=f"agent failed: {type(e).__name__}: {e}"[:500], seconds=round(time.time() - t0, 2),
                   session=str(sdir))
        return rec
    calls = res.get("tool_calls") or []
    rec.update(n_tool_calls=len(calls), tools=[c["name"] for c in calls],
               failed_tools=[c["name"] for c in calls if not c.get("ok")],
               answer_text=(res.get("answer") or "")[:600])
    resp = Response(text=res.get("answer") or "", steps=res.get("steps") or [],
                    numbers=res.get("numbers") or {}, obs=obs, vocabulary=vocab)
    if not calls and _not_understood(resp.text):
        g = Grade("fail", "no answer: the agent did not understand the request")
    else:
        g: Grade = grade(resp, q.answer, q.grade)
    reason = g.reason
    if g.status != "pass" and not calls:
        reason += " [no tool was called]"
    elif g.status != "pass" and rec["failed_tools"] and all(not c.get("ok") for c in calls):
        reason += f" [every tool call failed: {', '.join(dict.fromkeys(rec['failed_tools']))}]"
    rec.update(status=g.status, reason=reason, claimed=g.as_dict()["claimed"], source=g.source,
               score=g.score, seconds=round(time.time() - t0, 2))
    if g.status == "pass" and not cfg.keep_sessions:
        shutil.rmtree(sdir, ignore_errors=True)
    else:
        rec["session"] = str(sdir)
    return rec


def _not_understood(text: str) -> bool:
    """The answer is the agent's own 'could not understand the request' reply (its help text
    names tools and datasets, which must not count as an answer)."""
    try:
        from prompts import load

        head = load("agent_narrator_not_understood").split("{capabilities}")[0].strip()
    except Exception:
        return False
    return bool(head) and (text or "").strip().startswith(head)


def _ask(question: str, path: Path | None, sdir: Path, cfg: RunConfig):
    from agent.runner import Agent
    from agent.session import Session

    roots = [str(path)] if path else []
    if cfg.knowledge_root:
        roots.append(str(cfg.knowledge_root))
    session = Session.open(str(sdir), extra_roots=roots)
    if path:
        session.load_dataset(path, "data")
    agent = Agent(session, cfg.model, max_steps=cfg.max_steps, max_seconds=cfg.timeout)
    try:
        res = agent.ask(question)
    finally:
        agent.close()
    obs = vocab = None
    if path and "data" in session.dataset_ids:
        adata = session.get("data")
        obs = adata.obs.copy()
        vocab = {str(g) for g in adata.var_names}
    return res, obs, vocab


# ------------------------------------------------------------------------------- knowledge store
def default_kb_home() -> Path:
    root = os.environ.get("TISSUETALK_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "tissuetalk"
    return base / "eval-home"


def kb_genes_file(suite_path) -> Path | None:
    p = Path(suite_path) if suite_path else DEFAULT_SUITE
    for c in ((p if p.is_dir() else p.parent) / "kb_genes.json", DEFAULT_SUITE / "kb_genes.json"):
        if c.is_file():
            return c
    return None


def ensure_kb(home: Path, knowledge_root: Path, genes: dict[str, list[str]], species: set[str],
              log=print) -> str | None:
    """Build (once) `home`/kb with `genes` per species from the shared NCBI descriptions.
    Returns a problem string instead of raising."""
    from tools import knowledge as kb

    store = Path(home) / "kb"
    src = Path(knowledge_root) / "gene_descriptions"
    orth = Path(knowledge_root) / "orthologs" / "human_mouse_orthologs_hcop.tsv.gz"
    for sp in sorted(species):
        want = sorted(genes.get(sp, []))
        if not want:
            return f"kb_genes.json lists no {sp} genes"
        stamp = store / f".eval-{sp}.sha256"
        digest = hashlib.sha256("\n".join(want).encode()).hexdigest()
        if stamp.is_file() and stamp.read_text().strip() == digest:
            continue
        source = src / f"{sp}_gene_descriptions.jsonl.gz"
        if not source.is_file():
            return f"gene descriptions {source} are missing"
        log(f"building the eval knowledge store ({sp}, {len(want)} genes) in {store} ...")
        try:
            kb.build_store(source, sp, store, "minilm", genes=want,
                           orthologs=orth if sp == "mouse" and orth.is_file() else None)
        except Exception as e:
            return f"could not build the knowledge store: {type(e).__name__}: {e}"
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.write_text(digest + "\n")
    return None


# ------------------------------------------------------------------------------- the run
def _worker_init(env: dict) -> None:
    os.environ.update(env)
    import warnings

    warnings.filterwarnings("ignore")


def _error_record(e: SuiteError) -> dict:
    return {"id": e.id, "category": e.category, "family": "", "dataset": None, "question": "",
            "answer": None, "status": "error", "reason": f"{e.source}: {e.reason}", "claimed": None,
            "source": None, "score": None, "seconds": 0.0, "n_tool_calls": 0, "tools": [],
            "failed_tools": [], "answer_text": "", "session": None}


def run_suite(questions: list[Question], cfg: RunConfig, *, jobs: int = 1, errors=(),
              progress=None) -> list[dict]:
    """Results in question order (suite errors first). `progress(done, total, record)` is called
    as questions finish. With jobs > 1 questions run in that many worker processes (spawned;
    each loads its own copy of a question's dataset)."""
    out = [_error_record(e) for e in errors]
    total = len(questions)
    env = {**cfg.env, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
           "TRANSFORMERS_OFFLINE": os.environ.get("TRANSFORMERS_OFFLINE", "1")}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        results: list[dict | None] = [None] * total
        if jobs <= 1 or total <= 1:
            for i, q in enumerate(questions):
                results[i] = run_question(q, cfg)
                if progress:
                    progress(i + 1, total, results[i])
        else:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor, as_completed

            with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn"),
                                     initializer=_worker_init, initargs=(env,)) as ex:
                futs = {ex.submit(run_question, q, cfg): i for i, q in enumerate(questions)}
                done = 0
                for f in as_completed(futs):
                    i = futs[f]
                    try:
                        results[i] = f.result()
                    except Exception as e:  # a worker died (e.g. out of memory)
                        q = questions[i]
                        results[i] = _error_record(SuiteError(q.id, q.source, f"worker failed: {e!r}",
                                                              q.category))
                    done += 1
                    if progress:
                        progress(done, total, results[i])
        out += [r for r in results if r is not None]
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return out


def summarise(results: list[dict], *, wall_seconds: float | None = None, **meta) -> dict:
    """Scores of a run: pass rate overall, by category and by family, latency and tool calls.
    The pass rate counts errors as not passed."""
    n = len(results)

    def rate(rs):
        return round(sum(r["status"] == "pass" for r in rs) / len(rs), 4) if rs else 0.0

    cats = sorted({r["category"] for r in results})
    fams = sorted({f"{r['category']}/{r['family']}" for r in results if r.get("family")})
    asked = [r for r in results if r["seconds"] > 0]
    secs = [r["seconds"] for r in asked]
    return {
        **meta,
        "n_questions": n,
        "n_pass": sum(r["status"] == "pass" for r in results),
        "n_fail": sum(r["status"] == "fail" for r in results),
        "n_error": sum(r["status"] == "error" for r in results),
        "pass_rate": rate(results),
        "n_pass_by_source": {src: sum(r["status"] == "pass" and r.get("source") == src for r in results)
                             for src in ("evidence", "text", "obs", "parts")},
        "by_category": {c: rate([r for r in results if r["category"] == c]) for c in cats},
        "by_category_counts": {c: _counts([r for r in results if r["category"] == c]) for c in cats},
        "by_family": {f: rate([r for r in results if f"{r['category']}/{r['family']}" == f]) for f in fams},
        "median_seconds": round(statistics.median(secs), 2) if secs else 0.0,
        "mean_seconds": round(statistics.mean(secs), 2) if secs else 0.0,
        "tool_calls_per_question": round(statistics.mean([r["n_tool_calls"] for r in asked]), 2) if asked else 0.0,
        "wall_seconds": None if wall_seconds is None else round(wall_seconds, 1),
        "failures": [{"id": r["id"], "status": r["status"], "reason": r["reason"]}
                     for r in results if r["status"] != "pass"],
    }


def _counts(rs):
    return {"n": len(rs), **{s: sum(r["status"] == s for r in rs) for s in ("pass", "fail", "error")}}


def scorecard(summary: dict, max_failures: int = 200) -> str:
    """The plain-text scorecard."""
    lines = [f"tissuetalk eval: model {summary.get('model')}, {summary['n_questions']} questions, "
             f"suite {summary.get('suite')}", ""]
    w = max([len(c) for c in summary["by_category"]] + [8])
    lines.append(f"{'category':<{w}}  {'n':>4}  {'pass':>4}  {'fail':>4}  {'error':>5}  {'rate':>6}")
    for c, k in summary["by_category_counts"].items():
        lines.append(f"{c:<{w}}  {k['n']:>4}  {k['pass']:>4}  {k['fail']:>4}  {k['error']:>5}  "
                     f"{summary['by_category'][c]:>6.1%}")
    lines.append(f"{'total':<{w}}  {summary['n_questions']:>4}  {summary['n_pass']:>4}  {summary['n_fail']:>4}  "
                 f"{summary['n_error']:>5}  {summary['pass_rate']:>6.1%}")
    lines += ["", f"median latency {summary['median_seconds']:.2f} s (mean {summary['mean_seconds']:.2f} s); "
              f"{summary['tool_calls_per_question']:.2f} tool calls per question; wall time "
              f"{summary['wall_seconds']} s with {summary.get('jobs', 1)} job(s)"]
    fails = summary["failures"]
    if fails:
        lines += ["", f"failures and errors ({len(fails)}):"]
        for f in fails[:max_failures]:
            lines.append(f"  [{f['status']}] {f['id']}: {f['reason']}")
        if len(fails) > max_failures:
            lines.append(f"  ... and {len(fails) - max_failures} more (see the result file)")
    if summary.get("results_file"):
        lines += ["", f"results: {summary['results_file']}"]
    return "\n".join(lines)


def write_results(out_dir, summary: dict, results: list[dict]) -> Path:
    """A new JSON file in `out_dir` (atomic write) with the summary and every record."""
    from tools.io import write_text

    out = Path(out_dir)
    path = out / f"eval-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.json"
    n = 1
    while path.exists():
        path = out / f"eval-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{n}.json"
        n += 1
    summary["results_file"] = str(path)
    write_text(path, json.dumps({"summary": summary, "results": results}, indent=1, default=str))
    return path
