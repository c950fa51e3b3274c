"""`tissuetalk ask`: one request, one narrated report."""
from __future__ import annotations


def add_arguments(p) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--data", action="append", metavar="PATH",
                     help="dataset to load (.h5ad, Visium folder or table); repeat for more")
    src.add_argument("--demo", action="store_true", help="use the simulated demo tissue")
    p.add_argument("--model", metavar="SPEC", default=None,
                   help="openai:<model>, anthropic:<model>, openai-compatible:<url>#<model> or "
                        "offline (default: $TISSUETALK_MODEL, else a provider whose key is set, else offline)")
    p.add_argument("--session-dir", metavar="DIR", default=None,
                   help="session directory (default ~/.tissuetalk/sessions/<id>); reused if it exists")
    p.add_argument("--max-steps", type=int, default=12, help="most tool calls per request")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("question", help="the request, in quotes")


def open_agent(args, resume=None):
    """Session (with --data / --demo loaded) and Agent for the ask and chat commands."""
    from agent.providers import parse_spec
    from agent.runner import Agent
    from agent.session import Session

    parse_spec(args.model)  # a bad spec fails before a session is made
    paths = list(getattr(args, "data", None) or [])
    session = Session.open(args.session_dir, resume=resume, extra_roots=paths)
    if getattr(args, "demo", False):
        from tools.simulate import demo_path

        paths = [str(demo_path(session.dir))]
    for i, path in enumerate(paths):
        session.load_dataset(path, None if i else "data")
    agent = Agent(session, args.model, max_steps=getattr(args, "max_steps", 12))
    return agent


def run(args) -> int:
    import json
    import sys

    agent = open_agent(args)
    try:
        for mod, err in agent.import_errors.items():
            print(f"warning: tools module {mod} is unavailable ({err})", file=sys.stderr)
        res = agent.ask(args.question)
    finally:
        agent.close()
    if args.json:
        keys = ("answer", "report_md", "report_html", "session", "tool_calls", "numbers")
        print(json.dumps({k: res[k] for k in keys}, default=str))
    else:
        print(res["answer"])
        print(f"\nreport: {res['report_md']}\n        {res['report_html']}\nsession: {res['session']}")
    return 0
