"""`tissuetalk eval`: run the tissue-question suite through the agent and score it."""
from __future__ import annotations


def add_arguments(p) -> None:
    p.add_argument("--suite", metavar="PATH", default=None,
                   help="question file (.jsonl / .json) or folder (default: evals/questions)")
    p.add_argument("--model", metavar="SPEC", default=None,
                   help="model spec as for `ask` (offline, openai:<model>, ...; default as for `ask`)")
    p.add_argument("--data-root", metavar="DIR", default=None,
                   help="folder holding the datasets named by the questions "
                        "(default $TISSUETALK_DATA/spatial, else ../shared/data/spatial)")
    p.add_argument("--knowledge", metavar="DIR", default=None,
                   help="knowledge folder (gene sets, gene descriptions; default <data-root>/../knowledge)")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="questions run in parallel worker processes (each loads its own dataset copy)")
    p.add_argument("--json", action="store_true", help="print one JSON object (the summary)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N questions")
    p.add_argument("--category", action="append", metavar="C",
                   help="only these categories (repeat, or comma-separated)")
    p.add_argument("--match", metavar="TEXT", default=None, help="only questions whose id contains TEXT")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="folder for sessions and the result file (default: a new temporary folder)")
    p.add_argument("--max-steps", type=int, default=12, help="most tool calls per question")
    p.add_argument("--timeout", type=float, default=600.0, metavar="S", help="time budget per question")
    p.add_argument("--keep-sessions", action="store_true", help="keep the sessions of passed questions too")
    p.add_argument("--kb-home", metavar="DIR", default=None,
                   help="folder whose kb/ holds the eval's gene store, built there once if needed "
                        "(default $TISSUETALK_CACHE/eval-home or ~/.cache/tissuetalk/eval-home)")
    p.add_argument("--min-pass-rate", type=float, default=None, metavar="X",
                   help="exit with status 1 if the pass rate is below X (0-1)")


def run(args) -> int:
    import json
    import sys
    import tempfile
    import time
    from pathlib import Path

    from agent.providers import parse_spec
    from evals import runner as R
    from evals.suite import DEFAULT_SUITE, load_suite

    spec = str(parse_spec(args.model))  # a bad spec fails before anything runs
    suite = Path(args.suite) if args.suite else DEFAULT_SUITE
    questions, errors = load_suite(suite)
    cats = {c.strip() for x in (args.category or []) for c in x.split(",") if c.strip()}
    if cats:
        questions = [q for q in questions if q.category in cats]
        errors = [e for e in errors if e.category in cats or e.category == "invalid"]
    if args.match:
        questions = [q for q in questions if args.match in q.id]
        errors = [e for e in errors if args.match in e.id]
    if args.limit is not None:
        questions = questions[: max(0, args.limit)]
    data_root = Path(args.data_root).expanduser() if args.data_root else R.default_data_root()
    knowledge = Path(args.knowledge).expanduser() if args.knowledge else data_root.parent / "knowledge"
    out = Path(args.out).expanduser() if args.out else Path(tempfile.mkdtemp(prefix="tissuetalk-eval-"))
    out.mkdir(parents=True, exist_ok=True)
    cfg = R.RunConfig(model=args.model, data_root=str(data_root), knowledge_root=str(knowledge.resolve()),
                      out=str(out.resolve()), max_steps=args.max_steps, timeout=args.timeout,
                      keep_sessions=args.keep_sessions)

    def say(msg):
        if not args.json:
            print(msg, file=sys.stderr, flush=True)

    t0 = time.time()
    pre: list[dict] = []
    species = {q.needs_kb for q in questions if q.needs_kb}
    if species:
        home = Path(args.kb_home).expanduser() if args.kb_home else R.default_kb_home()
        genes_file = R.kb_genes_file(suite)
        problem = "the suite has no kb_genes.json" if genes_file is None else R.ensure_kb(
            home, knowledge, json.loads(genes_file.read_text()), species, log=say)
        if problem:  # knowledge questions become errors; the rest still runs
            bad = [q for q in questions if q.needs_kb]
            questions = [q for q in questions if not q.needs_kb]
            pre = [{**R._error_record(R.SuiteError(q.id, q.source, f"knowledge store: {problem}", q.category)),
                    "family": q.family, "dataset": q.dataset} for q in bad]
        else:
            cfg.env["TISSUETALK_HOME"] = str(home.resolve())

    def progress(done, total, rec):
        say(f"[{done}/{total}] {rec['status']:<5} {rec['seconds']:6.1f}s {rec['id']}"
            + (f"  ({rec['reason'][:120]})" if rec["status"] != "pass" else ""))

    say(f"running {len(questions)} questions with model {spec}, {args.jobs} job(s); sessions in {out}")
    results = pre + R.run_suite(questions, cfg, jobs=max(1, args.jobs), errors=errors, progress=progress)
    summary = R.summarise(results, wall_seconds=time.time() - t0, model=spec, suite=str(suite),
                          data_root=str(data_root), jobs=max(1, args.jobs))
    R.write_results(out, summary, results)
    if args.json:
        print(json.dumps(summary, default=str))
    else:
        print(R.scorecard(summary))
    if args.min_pass_rate is not None and summary["pass_rate"] < args.min_pass_rate:
        return 1
    return 0
