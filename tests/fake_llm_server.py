"""A scripted model server on 127.0.0.1 that speaks the OpenAI chat-completions and the
Anthropic messages wire formats (JSON and SSE streaming). Each request consumes the next turn
of the script; every request (path, headers, body) is recorded for the test to inspect.

Turns: {"error": 500} | {"tool_calls": [{"name", "args": dict | raw str}]} | {"text": "..."}.
"""
from __future__ import annotations

import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler

from local_server import LocalServer


class FakeLLM(LocalServer):
    def __init__(self, script: list[dict]):
        self.script = list(script)
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self.serve(type("H", (_Handler,), {"fake": self}))
        self.url = f"http://127.0.0.1:{self.port}"

    def next_turn(self) -> dict:
        with self.lock:
            if not self.script:
                return {"text": "(script exhausted)"}
            return self.script.pop(0)


class _Handler(BaseHTTPRequestHandler):
    fake: FakeLLM

    def log_message(self, *a):  # keep test output quiet
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
        with self.fake.lock:
            self.fake.requests.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body})
        anthropic = self.path.rstrip("/").endswith("/messages")
        if not anthropic and not self.path.rstrip("/").endswith("/chat/completions"):
            return self._json(404, {"error": {"message": f"no route {self.path}"}})
        turn = self.fake.next_turn()
        if "error" in turn:
            status = int(turn["error"])
            err = ({"type": "error", "error": {"type": "api_error", "message": f"scripted {status}"}}
                   if anthropic else {"error": {"message": f"scripted {status}", "type": "server_error"}})
            return self._json(status, err, {"retry-after-ms": "10"})
        stream = bool(body.get("stream"))
        if anthropic:
            return self._anthropic_stream(turn, body) if stream else self._json(200, _anthropic(turn, body))
        return self._openai_stream(turn, body) if stream else self._json(200, _openai(turn, body))

    def _json(self, status, obj, headers=None):
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _sse(self, events):
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.end_headers()
        for name, obj in events:
            line = (f"event: {name}\n" if name else "") + f"data: {obj if isinstance(obj, str) else json.dumps(obj)}\n\n"
            self.wfile.write(line.encode())
            self.wfile.flush()
        self.close_connection = True

    def _openai_stream(self, turn, body):
        base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0,
                "model": body.get("model", "fake")}
        ev = []
        if turn.get("text"):
            for i, word in enumerate(turn["text"].split(" ")):
                delta = {"content": (" " if i else "") + word}
                if i == 0:
                    delta["role"] = "assistant"
                ev.append((None, {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}))
        for i, tc in enumerate(turn.get("tool_calls", [])):
            d = {"tool_calls": [{"index": i, "id": f"call_{uuid.uuid4().hex[:8]}", "type": "function",
                                 "function": {"name": tc["name"], "arguments": _args(tc)}}]}
            ev.append((None, {**base, "choices": [{"index": 0, "delta": d, "finish_reason": None}]}))
        fin = "tool_calls" if turn.get("tool_calls") else "stop"
        ev.append((None, {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": fin}]}))
        ev.append((None, "[DONE]"))
        self._sse(ev)

    def _anthropic_stream(self, turn, body):
        msg = _anthropic(turn, body)
        ev = [("message_start", {"type": "message_start", "message": {
            **msg, "content": [], "stop_reason": None, "usage": {"input_tokens": 5, "output_tokens": 1}}})]
        for i, block in enumerate(msg["content"]):
            if block["type"] == "text":
                ev.append(("content_block_start", {"type": "content_block_start", "index": i,
                                                   "content_block": {"type": "text", "text": ""}}))
                for j, word in enumerate(block["text"].split(" ")):
                    ev.append(("content_block_delta", {"type": "content_block_delta", "index": i, "delta": {
                        "type": "text_delta", "text": (" " if j else "") + word}}))
            else:
                ev.append(("content_block_start", {"type": "content_block_start", "index": i, "content_block": {
                    "type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}}))
                ev.append(("content_block_delta", {"type": "content_block_delta", "index": i, "delta": {
                    "type": "input_json_delta", "partial_json": json.dumps(block["input"])}}))
            ev.append(("content_block_stop", {"type": "content_block_stop", "index": i}))
        ev.append(("message_delta", {"type": "message_delta", "delta": {
            "stop_reason": msg["stop_reason"], "stop_sequence": None}, "usage": {"output_tokens": 5}}))
        ev.append(("message_stop", {"type": "message_stop"}))
        self._sse(ev)


def _args(tc) -> str:
    return tc["args"] if isinstance(tc["args"], str) else json.dumps(tc["args"])


def _openai(turn, body) -> dict:
    calls = [{"id": f"call_{uuid.uuid4().hex[:8]}", "type": "function",
              "function": {"name": tc["name"], "arguments": _args(tc)}} for tc in turn.get("tool_calls", [])]
    msg = {"role": "assistant", "content": turn.get("text")}
    if calls:
        msg["tool_calls"] = calls
    return {"id": "chatcmpl-fake", "object": "chat.completion", "created": 0,
            "model": body.get("model", "fake"),
            "choices": [{"index": 0, "message": msg, "finish_reason": "tool_calls" if calls else "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10}}


def _anthropic(turn, body) -> dict:
    content = [{"type": "text", "text": turn["text"]}] if turn.get("text") else []
    for tc in turn.get("tool_calls", []):
        args = tc["args"] if isinstance(tc["args"], dict) else {"raw": tc["args"]}
        content.append({"type": "tool_use", "id": f"toolu_{uuid.uuid4().hex[:8]}", "name": tc["name"],
                        "input": args})
    return {"id": "msg_fake", "type": "message", "role": "assistant", "model": body.get("model", "fake"),
            "content": content, "stop_reason": "tool_use" if turn.get("tool_calls") else "end_turn",
            "stop_sequence": None, "usage": {"input_tokens": 5, "output_tokens": 5}}
