"""The agent: a session, a chat model (or the offline planner), the registered tools and the
compiled LangGraph graph. `ask()` answers one request, reporting progress to a callback."""
from __future__ import annotations

import time

from agent.providers import make_chat_model, parse_spec
from agent.report import write_reports
from agent.toolset import discover, langchain_tools


def flatten_numbers(steps: list[dict], limit: int = 300) -> dict:
    """{"tool.field.sub": number} for every numeric value in the turn's results."""
    out: dict = {}

    def walk(prefix, v):
        if len(out) >= limit:
            return
        if isinstance(v, bool):
            return
        if isinstance(v, (int, float)):
            key, n = prefix, 2
            while key in out:
                key, n = f"{prefix}#{n}", n + 1
            out[key] = v
        elif isinstance(v, dict):
            for k, x in v.items():
                walk(f"{prefix}.{k}", x)
        elif isinstance(v, (list, tuple)):
            for i, x in enumerate(v):
                walk(f"{prefix}.{i}", x)

    for s in steps:
        if s["ok"]:
            walk(s["name"], s["result"])
    return out


class Agent:
    """Orchestrates one session; `model` is a spec string (see agent.providers)."""

    def __init__(self, session, model: str | None = None, *, max_steps: int = 12,
                 max_seconds: float = 900.0, max_retries: int = 3, timeout: float = 120.0,
                 max_tokens: int = 2048):
        from agent import graph

        self.session = session
        self.spec = parse_spec(model)
        self.model = make_chat_model(self.spec, max_retries=max_retries, timeout=timeout,
                                     max_tokens=max_tokens)
        self.specs, self.import_errors = discover()
        self.max_steps, self.max_seconds = max_steps, max_seconds
        self._on_event = None
        self.bound_model = self.model.bind_tools(langchain_tools(self.specs)) if self.model else None
        self.checkpointer = session.checkpointer()
        self.graph = graph.build(self)
        session.set_meta(model=str(self.spec))

    @property
    def config(self) -> dict:
        return {"configurable": {"thread_id": self.session.id},
                "recursion_limit": 2 * self.max_steps + 8}

    def capabilities(self) -> list[str]:
        """One line per tool: summary and the phrases the offline planner understands."""
        return [f"{s.summary.rstrip('.')} (say: {', '.join(repr(i) for i in s.intents[:3])})"
                for s in self.specs.values() if s.intents]

    def _input(self, question: str) -> dict:
        from langchain_core.messages import HumanMessage

        return {"messages": [HumanMessage(content=question)], "question": question,
                "turn_start": time.time(), "steps": [], "pending": None, "tried": [],
                "problems": [], "notes": [], "stopped": None, "answer": "", "unsupported": []}

    def record_turn(self, question, steps, answer, unsupported) -> dict:
        """Write the reports of one request; returns the turn record."""
        index = self.session.meta.get("turns", 0) + 1
        turn = {"index": index, "question": question, "model": str(self.spec), "session": self.session.id,
                "steps": steps, "answer": answer, "unsupported": unsupported}
        turn["report_md"], turn["report_html"] = write_reports(turn, self.session)
        self.session.set_meta(turns=index)
        return turn

    def result(self, values: dict) -> dict:
        steps = values.get("steps") or []
        return {"answer": values.get("answer", ""), "report_md": values.get("report_md"),
                "report_html": values.get("report_html"), "session": self.session.id,
                "tool_calls": [{"name": s["name"], "args": s["args"], "ok": s["ok"],
                                "seconds": s["seconds"]} for s in steps],
                "numbers": flatten_numbers(steps), "unsupported": values.get("unsupported") or [],
                "steps": steps}

    def emit(self, kind: str, payload) -> None:
        if self._on_event is not None:
            self._on_event(kind, payload)

    @property
    def streaming(self) -> bool:
        return self._on_event is not None

    def ask(self, question: str, on_event=None) -> dict:
        """Answer one request; returns answer, report paths, tool calls and numbers.

        `on_event(kind, payload)` receives "tool_start", "tool_end" and (from a model, streamed)
        "token" events; everything runs in the calling thread, so Ctrl-C reaches the tool."""
        self._on_event = on_event
        try:
            values = self.graph.invoke(self._input(question), self.config)
        finally:
            self._on_event = None
        return self.result(values)

    def history(self) -> list:
        state = self.graph.get_state(self.config)
        return list(state.values.get("messages", [])) if state and state.values else []

    def close(self) -> None:
        try:
            self.checkpointer.conn.close()
        except Exception:
            pass
