"""A fake OpenAI-compatible chat endpoint on 127.0.0.1, for testing the judge's client.

In: a responder (user prompt -> reply text) and a failure plan. Out: ``POST
/v1/chat/completions`` answered with valid ``chat.completion`` JSON, or with the planned
HTTP errors; every request recorded (prompt, Authorization header) and the most requests
in flight at once measured. Failures carry ``retry-after-ms`` (1 ms by default), which the
openai SDK honours instead of its 0.5-8 s back-off, so retry tests run in milliseconds.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeOpenAIServer:
    """Use as a context manager; ``base_url`` is ``http://127.0.0.1:PORT/v1``.

    ``delay`` (seconds, settable) is slept before each answer, to hold requests in flight
    or outlast a client's timeout. ``finish_reason`` (settable) is sent with every reply.
    """

    def __init__(self, responder: Callable[[str], str] = lambda prompt: "Verdict: A") -> None:
        self.responder = responder
        self.delay = 0.0
        self.finish_reason = "stop"
        self.requests: list[dict[str, Any]] = []
        self.max_in_flight = 0
        self._in_flight = 0
        self._plan: deque[tuple[int, int | None] | None] = deque()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def base_url(self) -> str:
        assert self._server is not None, "start the server with 'with FakeOpenAIServer()'"
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def fail_next(
        self, count: int, *, status: int = 500, skip: int = 0, retry_after_ms: int | None = 1
    ) -> None:
        """Answer the next ``skip`` requests normally, then fail ``count`` with ``status``
        (``retry_after_ms=None`` sends no retry header: the SDK's own back-off applies)."""
        with self._lock:
            self._plan.clear()
            self._plan.extend([None] * skip + [(status, retry_after_ms)] * count)

    def clear_failures(self) -> None:
        with self._lock:
            self._plan.clear()

    def __enter__(self) -> FakeOpenAIServer:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._server.block_on_close = False  # a handler still sleeping need not be awaited
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        ).start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    def _answer(self, body: dict[str, Any], authorization: str | None) -> tuple[int, dict, dict]:
        """``(status, headers, json body)`` for one request; records it and counts it."""
        prompt = next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")
        with self._lock:
            self.requests.append({"prompt": prompt, "authorization": authorization})
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
            planned = self._plan.popleft() if self._plan else None
        try:
            time.sleep(self.delay)
            if planned is not None:
                status, retry_after_ms = planned
                headers = {} if retry_after_ms is None else {"retry-after-ms": str(retry_after_ms)}
                error = {"message": f"planned failure {status}", "type": "fake", "code": None}
                return status, headers, {"error": error}
            text = self.responder(prompt)
            with self._lock:
                number = len(self.requests)
            return 200, {}, _completion(number, body.get("model", "fake"), text, self.finish_reason)
        finally:
            with self._lock:
                self._in_flight -= 1

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length))
                if self.path.rstrip("/") != "/v1/chat/completions":
                    status, headers, payload = 404, {}, {"error": {"message": "no such path"}}
                else:
                    authorization = self.headers.get("Authorization")
                    status, headers, payload = server._answer(body, authorization)
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out
                    pass

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

        return Handler


def _completion(number: int, model: str, text: str, finish_reason: str) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-fake-{number}",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish_reason,
                "logprobs": None,
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
