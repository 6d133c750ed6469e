"""A local web page for the human-in-the-loop writer: the story, both memories and the plans, all editable.

    memlm write --store story.db --backend hf:DIR --web            # http://127.0.0.1:8765

Served by the standard library's HTTP server (one writer, one lock: requests run one at a time). The page
(``templates/writer.html``) reads ``GET /api/state`` and posts JSON:

* ``POST /api/start`` ``{"premise": text}``: the first step;
* ``POST /api/step`` ``{"plan": index | text}``: the next step, following plan ``index`` or a plan of one's own;
* ``POST /api/plan`` ``{"index": i, "text": text}``: rewrite a plan;
* ``POST /api/short_term`` ``{"text": text}``: rewrite the short-term memory;
* ``POST /api/paragraph`` ``{"id": id, "text": text}``: rewrite a paragraph (long-term memory);
* ``GET /api/search?q=...``: the long-term memories closest to a query.

Every edit is written to the store at once and read by the next step. Errors come back as
``{"error": message}`` with status 400 (bad request) or 500.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from memlm.textmem.writer import RecurrentWriter

PAGE = Path(__file__).parent / "templates" / "writer.html"


def writer_state(writer: RecurrentWriter) -> dict:
    """What the page shows."""
    if not writer.started:
        return {"started": False}
    state = writer.state
    return {
        "started": True, "step": state["step"], "premise": state["premise"],
        "paragraphs": [{"id": item.id, "text": item.text} for item in writer.memory.items("paragraph")],
        "short_term": writer.short_term(), "plans": state["plans"],
        "summaries": [item.text for item in writer.memory.items("summary")],
    }


def make_server(writer: RecurrentWriter, host: str = "127.0.0.1", port: int = 8765) -> ThreadingHTTPServer:
    """An HTTP server for ``writer`` (not yet serving: call ``serve_forever``; port 0 picks a free one)."""
    lock = threading.Lock()
    page = PAGE.read_bytes()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep the terminal for the writer's own output
            pass

        def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, payload: dict) -> None:
            self._send(status, json.dumps(payload).encode())

        def do_GET(self) -> None:
            url = urlparse(self.path)
            if url.path == "/":
                return self._send(200, page, "text/html; charset=utf-8")
            if url.path == "/api/state":
                with lock:
                    return self._json(200, writer_state(writer))
            if url.path == "/api/search":
                query = parse_qs(url.query).get("q", [""])[0]
                return self._handle(lambda: {"results": [
                    {"id": i.id, "kind": i.kind, "text": i.text, "score": i.score}
                    for i in writer.memory.search(query, k=5, kind=None)]})
            self._json(404, {"error": f"no such page {url.path!r}"})

        def do_POST(self) -> None:
            actions = {
                "/api/start": lambda body: writer.start(body["premise"]),
                "/api/step": lambda body: writer.step(body.get("plan")),
                "/api/plan": lambda body: writer.edit_plan(int(body["index"]), body["text"]),
                "/api/short_term": lambda body: writer.edit_short_term(body["text"]),
                "/api/paragraph": lambda body: writer.memory.edit(int(body["id"]), body["text"]),
            }
            action = actions.get(urlparse(self.path).path)
            if action is None:
                return self._json(404, {"error": f"no such action {self.path!r}"})
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            except json.JSONDecodeError as error:
                return self._json(400, {"error": f"the request body is not JSON: {error}"})
            self._handle(lambda: (action(body), writer_state(writer))[1])

        def _handle(self, work) -> None:
            try:
                with lock:
                    payload = work()
            except (KeyError, ValueError, IndexError, TypeError) as error:
                return self._json(400, {"error": f"{type(error).__name__}: {error}"})
            except Exception as error:  # noqa: BLE001  (shown on the page; the store is unchanged)
                return self._json(500, {"error": f"{type(error).__name__}: {error}"})
            self._json(200, payload)

    return ThreadingHTTPServer((host, port), Handler)
