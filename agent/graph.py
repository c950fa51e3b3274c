"""The LangGraph state graph: plan -> tools -> plan -> ... -> narrate, with step and time budgets.

`plan` asks the chat model (or the offline planner) for the next tool calls; `tools` validates
and runs them against the session workspace and answers with ToolMessages (results as small
JSON, errors as text the model can act on); `narrate` writes the answer and the reports."""
from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, TypedDict

from langchain_core.messages import AIMessage, SystemMessage, ToolMessage
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages

from agent import narrator, planner
from agent.providers import describe_provider_error
from agent.toolset import execute, log_step, tool_message_text
from prompts import load


class AgentState(TypedDict, total=False):
    messages: Annotated[list, add_messages]
    question: str
    turn_start: float
    steps: list  # this turn's step records
    pending: Any  # offline: queued tool calls (None before planning)
    tried: list  # offline: prerequisites already inserted
    problems: list
    notes: list
    stopped: str | None
    answer: str
    report_md: str
    report_html: str
    unsupported: list


def repair(messages: list) -> list:
    """Messages a provider accepts: every tool call answered, no orphan tool results."""
    out, open_ids = [], []
    for m in messages:
        if isinstance(m, ToolMessage):
            if m.tool_call_id in open_ids:
                open_ids.remove(m.tool_call_id)
                out.append(m)
            continue
        out += [ToolMessage(content="error: not run (the turn was interrupted)", tool_call_id=i)
                for i in open_ids]
        open_ids = []
        out.append(m)
        if isinstance(m, AIMessage):
            open_ids = [tc["id"] for tc in m.tool_calls] + [tc["id"] for tc in m.invalid_tool_calls]
    out += [ToolMessage(content="error: not run (stopped)", tool_call_id=i) for i in open_ids]
    return out


def build(agent):
    """Compile the graph for `agent` (an agent.runner.Agent) with its checkpointer."""
    session, specs = agent.session, agent.specs

    def over_budget(state) -> str | None:
        if len(state.get("steps") or []) >= agent.max_steps:
            return "the step budget was reached"
        if time.time() - state.get("turn_start", time.time()) > agent.max_seconds:
            return "the time budget was reached"
        return None

    def plan(state: AgentState) -> dict:
        stop = over_budget(state)
        if stop:
            return {"stopped": stop}
        return plan_offline(state) if agent.model is None else plan_model(state)

    def plan_model(state: AgentState) -> dict:
        datasets = ", ".join(f"{k} ({v['shape'][0]} observations x {v['shape'][1]} genes)"
                             for k, v in session.meta["datasets"].items()) or "none"
        msgs = [SystemMessage(load("agent_system").format(datasets=datasets))] + repair(state["messages"])
        try:
            if agent.streaming:  # tokens to the chat as they arrive (same thread: Ctrl-C works)
                from langchain_core.messages.utils import message_chunk_to_message

                ai = None
                for chunk in agent.bound_model.stream(msgs):
                    if chunk.text:
                        agent.emit("token", chunk.text)
                    ai = chunk if ai is None else ai + chunk
                ai = message_chunk_to_message(ai) if ai is not None else AIMessage(content="")
            else:
                ai = agent.bound_model.invoke(msgs)
        except Exception as e:  # provider failure after the SDK's retries
            return {"stopped": describe_provider_error(e) or f"the model call failed ({type(e).__name__})"}
        return {"messages": [ai]}

    def plan_offline(state: AgentState) -> dict:
        q, steps = state["question"], state.get("steps") or []
        out: dict = {}
        pending = state.get("pending")
        if pending is None:
            p = planner.make_plan(q, specs, session)
            pending, out = list(p.steps), {"problems": p.problems, "notes": p.notes}
        pending = list(pending)
        tried = list(state.get("tried") or [])
        if steps and not steps[-1]["ok"]:
            last = steps[-1]
            if last.get("interrupted"):
                return {**out, "pending": [], "stopped": "a tool was interrupted"}
            ds = last["args"].get("dataset") if isinstance(last["args"], dict) else None
            pre = (planner.prerequisite(last["error"], specs, set(tried), q, session, ds, last["name"])
                   if len(tried) < 3 else None)
            if pre is not None:  # else go on with the rest of the plan; the failure is narrated
                tried.append(pre["name"])
                pending = [pre, {"name": last["name"], "args": last["args"]}] + pending
        if steps and steps[-1]["ok"]:
            last, spec = steps[-1], specs.get(steps[-1]["name"])
            follow = spec.then(last["args"], last["result"]) if spec and spec.then else None
            done = {s["name"] for s in steps} | {s["name"] for s in pending}
            if follow and follow["name"] in specs and follow["name"] not in done:
                pending = [{**follow, "why": f"shows the result of {last['name']}"}] + pending
        problems = list(out.get("problems", state.get("problems") or []))
        while pending and pending[0].get("defer"):
            args, problem = planner.refill(pending[0], q, specs, session)
            if problem:
                problems.append(problem)
                pending.pop(0)
            else:
                pending[0] = {**pending[0], "args": args, "defer": False}
        out["problems"] = problems
        if not pending:
            return {**out, "pending": [], "tried": tried}
        nxt = pending.pop(0)
        args = dict(nxt["args"])
        spec = specs.get(nxt["name"])
        if spec and "dataset" in spec.params.model_fields and "dataset" not in args and session.dataset_ids:
            args["dataset"] = session.dataset_ids[-1]  # e.g. the dataset a load step just added
        call = {"name": nxt["name"], "args": args, "id": f"call_{uuid.uuid4().hex[:12]}", "type": "tool_call"}
        return {**out, "messages": [AIMessage(content="", tool_calls=[call])], "pending": pending,
                "tried": tried}

    def route(state: AgentState) -> str:
        last = state["messages"][-1] if state.get("messages") else None
        if state.get("stopped") or not isinstance(last, AIMessage):
            return "narrate"
        return "tools" if (last.tool_calls or last.invalid_tool_calls) else "narrate"

    def tools(state: AgentState) -> dict:
        last: AIMessage = state["messages"][-1]
        steps, msgs, stopped = list(state.get("steps") or []), [], None
        calls = [(tc["id"], tc["name"], tc["args"], None) for tc in last.tool_calls]
        calls += [(tc["id"], tc.get("name") or "?", tc.get("args"), tc.get("error"))
                  for tc in last.invalid_tool_calls]
        for cid, name, args, bad in calls:
            if stopped:
                msgs.append(ToolMessage(content="error: not run (stopped)", tool_call_id=cid, name=name,
                                        status="error"))
                continue
            agent.emit("tool_start", {"name": name, "args": args})
            if bad is not None or not isinstance(args, dict):
                step = {"id": cid, "name": name, "args": {"raw": str(args)}, "ok": False, "seconds": 0.0,
                        "result": None, "artefacts": [],
                        "error": f"the arguments of {name} are not valid JSON: {args!r}"}
                log_step(session, step)
            else:
                step = execute(session, specs, name, args, call_id=cid)
            steps.append(step)
            agent.emit("tool_end", {"name": name, "ok": step["ok"], "seconds": step["seconds"],
                                    "error": step["error"]})
            msgs.append(ToolMessage(content=tool_message_text(step), tool_call_id=cid, name=name,
                                    status="success" if step["ok"] else "error"))
            if step.get("interrupted"):
                stopped = "a tool was interrupted"
        out = {"messages": msgs, "steps": steps}
        if stopped:
            out["stopped"] = stopped
        return out

    def narrate(state: AgentState) -> dict:
        steps = state.get("steps") or []
        caps = agent.capabilities()
        last = state["messages"][-1] if state.get("messages") else None
        templated = (agent.model is None or bool(state.get("stopped")) or not isinstance(last, AIMessage)
                     or bool(last.tool_calls))
        if templated:
            answer = narrator.narrate(state["question"], steps, state.get("problems") or [],
                                      state.get("notes") or [], caps, state.get("stopped"))
        else:
            answer = last.text.strip() or "(the model returned an empty answer)"
            failed = [s["name"] for i, s in enumerate(steps) if not s["ok"]
                      and not any(t["ok"] and t["name"] == s["name"] for t in steps[i + 1:])]
            if failed:
                answer += ("\n\nNote: some tool calls failed (" + ", ".join(dict.fromkeys(failed))
                           + "); see the steps in the report.")
            bad = narrator.unsupported_numbers(answer, steps)
            if not any(s["ok"] for s in steps) and (steps or bad):
                answer += "\n\nNote: the answer above is not backed by any successful tool result."
            if bad:
                answer += "\n\nWarning: these numbers appear in no tool result: " + ", ".join(bad) + "."
        unsupported = narrator.unsupported_numbers(answer, steps)
        turn = agent.record_turn(state["question"], steps, answer, unsupported)
        out = {"answer": answer, "unsupported": unsupported,
               "report_md": turn["report_md"], "report_html": turn["report_html"]}
        if templated:  # the model's own final message is already in the history
            out["messages"] = [AIMessage(content=answer)]
        return out

    g = StateGraph(AgentState)
    g.add_node("plan", plan)
    g.add_node("tools", tools)
    g.add_node("narrate", narrate)
    g.add_edge(START, "plan")
    g.add_conditional_edges("plan", route, {"tools": "tools", "narrate": "narrate"})
    g.add_edge("tools", "plan")
    g.add_edge("narrate", END)
    return g.compile(checkpointer=agent.checkpointer)
