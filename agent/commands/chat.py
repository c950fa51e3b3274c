"""`tissuetalk chat`: a terminal conversation with streaming output and slash commands."""
from __future__ import annotations

import sys
import threading
import time

HELP = "commands: /data [PATH]  /tools  /report  /history  /quit"


def add_arguments(p) -> None:
    p.add_argument("--data", action="append", metavar="PATH", help="dataset to load; repeat for more")
    p.add_argument("--demo", action="store_true", help="start with the simulated demo tissue")
    p.add_argument("--model", metavar="SPEC", default=None,
                   help="openai:<model>, anthropic:<model>, openai-compatible:<url>#<model> or offline")
    p.add_argument("--session-dir", metavar="DIR", default=None, help="session directory")
    p.add_argument("--resume", metavar="ID", default=None,
                   help="continue a session (its id, or its directory)")
    p.add_argument("--max-steps", type=int, default=12, help="most tool calls per request")
    p.add_argument("--progress-every", type=float, default=10.0, metavar="S",
                   help="print a progress line every S seconds while a tool runs")


def say(text: str = "", end: str = "\n") -> None:
    sys.stdout.write(text + end)
    sys.stdout.flush()


class Ticker:
    """Prints '... still running NAME (N s)' every `every` seconds while a tool runs."""

    def __init__(self, every: float):
        self.every, self.stop, self.thread = every, threading.Event(), None

    def start(self, name: str) -> None:
        self.stop.clear()
        t0 = time.time()

        def loop():
            while not self.stop.wait(self.every):
                say(f"  ... still running {name} ({time.time() - t0:.0f} s)")

        self.thread = threading.Thread(target=loop, daemon=True)
        self.thread.start()

    def end(self) -> None:
        self.stop.set()


def answer(agent, question: str, every: float) -> dict | None:
    ticker, streamed = Ticker(every), []

    def on_event(kind, payload):
        if kind == "tool_start":
            say(f"  -> {payload['name']} {payload['args']}")
            ticker.start(payload["name"])
        elif kind == "tool_end":
            ticker.end()
            mark = f"ok ({payload['seconds']:.1f} s)" if payload["ok"] else f"failed: {payload['error']}"
            say(f"  <- {payload['name']} {mark}")
        elif kind == "token":
            if not streamed:
                say("tissuetalk> ", end="")
            streamed.append(payload)
            say(payload, end="")

    try:
        res = agent.ask(question, on_event=on_event)
    except KeyboardInterrupt:
        say("\ninterrupted; the session is intact")
        return None
    finally:
        ticker.end()
    text = res["answer"]
    if streamed:
        say()
    shown = "".join(streamed).strip()
    if shown and text.startswith(shown):
        text = text[len(shown):].strip()  # only the notes the agent added to the model's answer
    elif not shown:
        say("tissuetalk> ", end="")
    for para in (p for p in text.split("\n\n") if p.strip()):  # templated answers: paragraph by paragraph
        say(para + "\n")
    say(f"(report: {res['report_md']})")
    return res


def command(agent, line: str, last: dict | None) -> bool:
    """Run a slash command; False means quit."""
    cmd, _, arg = line.strip().partition(" ")
    s = agent.session
    if cmd in ("/quit", "/exit"):
        return False
    if cmd == "/tools":
        for spec in agent.specs.values():
            say(f"  {spec.name}: {spec.summary}")
        for mod, err in agent.import_errors.items():
            say(f"  (unavailable: {mod}: {err})")
    elif cmd == "/data":
        if arg.strip():
            s.allow(arg.strip())  # a path the user types is like --data
            name = s.load_dataset(arg.strip(), None)
            say(f"  loaded '{name}' {tuple(s.meta['datasets'][name]['shape'])}")
        for k, v in s.meta["datasets"].items():
            say(f"  {k}: {v['shape'][0]} x {v['shape'][1]}  from {v['source']}")
        if not s.dataset_ids:
            say("  no dataset loaded; /data PATH loads one")
    elif cmd == "/report":
        if last:
            say(f"  {last['report_md']}\n  {last['report_html']}")
        else:
            reports = sorted((s.dir / "reports").glob("*.md"))
            say(f"  {reports[-1]}" if reports else "  no report yet")
    elif cmd == "/history":
        for m in agent.history():
            role = {"human": "you", "ai": "tissuetalk", "tool": "tool"}.get(m.type, m.type)
            calls = getattr(m, "tool_calls", None)
            text = m.text if hasattr(m, "text") else str(m.content)
            if calls:
                text = "calls " + ", ".join(f"{c['name']}({c['args']})" for c in calls)
            say(f"  {role}: {text[:300]}")
    else:
        say(f"  unknown command {cmd}; {HELP}")
    return True


def run(args) -> int:
    from agent.commands.ask import open_agent
    from tools.errors import TissueTalkError

    agent = open_agent(args, resume=args.resume)
    s = agent.session
    n = len(agent.history())
    say(f"tissuetalk chat: session {s.id} ({s.dir}), model {agent.spec}")
    if args.resume:
        say(f"resumed: {n} messages so far")
    say(f"datasets: {', '.join(s.dataset_ids) or 'none'}. {HELP}")
    last = None
    try:
        while True:
            try:
                line = input("you> ")
            except EOFError:
                break
            except KeyboardInterrupt:
                say("")
                continue
            if not line.strip():
                continue
            if line.startswith("/"):
                try:
                    if not command(agent, line, last):
                        break
                except TissueTalkError as e:
                    say(f"  error: {e}")
                continue
            last = answer(agent, line, args.progress_every) or last
    finally:
        agent.close()
    say(f"bye; resume with: tissuetalk chat --resume {s.id if not args.session_dir else s.dir}")
    return 0
