"""Judge test fixtures: a stub OpenAI-compatible chat server on 127.0.0.1 (bounded: it answers at most
``max_requests`` requests, then HTTP 400, so a runaway client fails the test instead of hanging it)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


def canned_answer(messages: list[dict]) -> str:
    """A well-formed answer for whichever judge call the last user turn is."""
    last = messages[-1]["content"]
    if "Question 1 of 3" in last:
        return "Relevance: it fits\nRelevance score: 4"
    if "Question 2 of 3" in last:
        return "Unexpectedness: new to them\nUnexpectedness score: 5"
    if "Question 3 of 3" in last:
        return "Serendipity: both\nSerendipity score: 4"
    if "Step 1." in last:
        return ("Relevance: fits\nRelevance score: 3\nUnexpectedness: surprising\nUnexpectedness score: 4\n"
                "Serendipity: fine\nSerendipity score: 4")
    return "Serendipity score: 2" if "Funk" in last else "Serendipity score: 5"


class StubServer:
    """``statuses``: HTTP codes to answer first, in order (e.g. [429, 500]); then ``answer(messages)``."""

    def __init__(self, *, statuses=(), answer=canned_answer, max_requests: int = 200, delay_s: float = 0.0,
                 retry_after: str | None = None, fail_after: int | None = None):
        self.statuses = list(statuses)
        self.answer = answer
        self.max_requests = max_requests
        self.delay_s = delay_s
        self.retry_after = retry_after
        self.fail_after = fail_after  # answer this many requests, then HTTP 503 for good (a dying server)
        self.requests: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with stub.lock:
                    stub.requests.append({"path": self.path, **body})
                    n = len(stub.requests)
                    status = stub.statuses.pop(0) if stub.statuses else 200
                    stub.in_flight += 1
                    stub.max_in_flight = max(stub.max_in_flight, stub.in_flight)
                try:
                    time.sleep(stub.delay_s)
                    if n > stub.max_requests:
                        status = 400
                    elif stub.fail_after is not None and n > stub.fail_after:
                        status = 503
                    if status != 200:
                        self.send_response(status)
                        if stub.retry_after:
                            self.send_header("Retry-After", stub.retry_after)
                        self.end_headers()
                        self.wfile.write(b'{"error": "stub"}')
                        return
                    text = stub.answer(body["messages"])
                    data = {"choices": [{"message": {"role": "assistant", "content": text}}],
                            "usage": {"prompt_tokens": 100, "completion_tokens": 10}}
                    raw = json.dumps(data).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(raw)))
                    self.end_headers()
                    self.wfile.write(raw)
                finally:
                    with stub.lock:
                        stub.in_flight -= 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> StubServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def stub_server():
    """The :class:`StubServer` class: ``with stub_server(statuses=[429]) as server: ...``."""
    return StubServer
