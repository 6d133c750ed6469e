"""A local web page for the human-in-the-loop writer: the story, both memories and the plans, all editable.

    memlm write --store story.db --backend hf:DIR --web            # http://127.0.0.1:8765

Served by the standard library's HTTP server (one writer, one lock: requests run one at a time). The page
(``templates/writer.html``) reads ``GET /api/state`` and posts JSON objects:

* ``POST /api/start`` ``{"premise": text}``: the first step;
* ``POST /api/step`` ``{"plan": index | text}`` (or ``{}``): the next step, following plan ``index`` or a plan
  of one's own (none: the writer's chooser picks);
* ``POST /api/plan`` ``{"index": i, "text": text}``: rewrite a plan;
* ``POST /api/short_term`` ``{"text": text}``: rewrite the short-term memory;
* ``POST /api/paragraph`` ``{"id": id, "text": text}``: rewrite a paragraph (long-term memory; paragraphs only);
* ``GET /api/search?q=...``: the long-term memories closest to a query.

Every edit is written to the store at once and read by the next step. Errors come back as
``{"error": message}`` with status 400 (bad request), 403 (refused), 404, 411, 413, 415 or 500.

The page has no login, so the server serves a loopback address only and answers only the page it served:

* every request must name the served address in ``Host`` (``127.0.0.1:PORT``, or ``localhost:PORT``), which
  stops other sites reaching it by DNS rebinding; an ``Origin``, when sent, must be that address too;
* every ``/api/`` request must carry the session's token (made at start, embedded in the page) in the
  ``X-MemLM-Token`` header, which other sites can neither read nor send without a CORS preflight, which
  is not answered;
* a POST must be ``Content-Type: application/json`` with a well-formed ``Content-Length`` (at most
  ``MAX_BODY`` bytes) and a JSON object holding exactly the action's fields;
* no page may frame this one (``Content-Security-Policy: frame-ancestors 'none'``, ``X-Frame-Options: DENY``).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import re
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from memlm.textmem.writer import RecurrentWriter

PAGE = Path(__file__).parent / "templates" / "writer.html"
TOKEN_PLACEHOLDER = b"{{MEMLM_TOKEN}}"
TOKEN_HEADER = "X-MemLM-Token"
MAX_BODY = 1 << 20  # bytes of a POST body
SOCKET_TIMEOUT = 60.0  # seconds a client may take to send its request (a short body does not hold a thread)
SECURITY_HEADERS = {
    "Content-Security-Policy": "frame-ancestors 'none'", "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store", "Referrer-Policy": "no-referrer",
}


class RequestError(Exception):
    """A request refused before any work: ``status`` and the message sent back."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


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


def check_loopback(host: str) -> None:
    """ValueError unless ``host`` is ``localhost`` or an IPv4 loopback address: the page has no login."""
    try:
        loopback = host == "localhost" or ipaddress.IPv4Address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"--host {host!r}: the writer's page has no login, so it is served on a loopback address "
                         "only (127.0.0.1, localhost); from another machine, forward the port "
                         "(ssh -L 8765:127.0.0.1:8765)")


def fields(body: object, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict:
    """``body`` as a JSON object with all ``required`` keys and no keys but those and ``optional``
    (RequestError 400 otherwise)."""
    if not isinstance(body, dict):
        raise RequestError(400, f"the request body must be a JSON object, got {type(body).__name__}")
    missing = [key for key in required if key not in body]
    unknown = sorted(set(body) - set(required) - set(optional))
    if missing or unknown:
        raise RequestError(400, f"the request body must have the fields {list(required)}"
                           + (f" (optional: {list(optional)})" if optional else "")
                           + (f"; missing {missing}" if missing else "") + (f"; unknown {unknown}" if unknown else ""))
    return body


def integer(body: dict, key: str) -> int:
    value = body[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(400, f"{key!r} must be an integer, got {value!r}")
    return value


def string(body: dict, key: str) -> str:
    if not isinstance(body[key], str):
        raise RequestError(400, f"{key!r} must be a string, got {body[key]!r}")
    return body[key]


def edit_paragraph(writer: RecurrentWriter, item_id: int, text: str) -> None:
    """Rewrite paragraph ``item_id``; any other item (the short-term memory, a plan, ...) is refused."""
    item = writer.memory.get(item_id)
    if item.kind != "paragraph":
        raise RequestError(400, f"item {item_id} is a {item.kind!r}, not a paragraph: /api/paragraph edits "
                           "paragraphs only")
    writer.memory.edit(item_id, text)


def make_server(writer: RecurrentWriter, host: str = "127.0.0.1", port: int = 8765) -> ThreadingHTTPServer:
    """An HTTP server for ``writer`` on the loopback address ``host`` (not yet serving: call ``serve_forever``;
    port 0 picks a free one). Its session token is ``server.token``."""
    check_loopback(host)
    lock = threading.Lock()
    token = secrets.token_urlsafe(32)
    page = PAGE.read_bytes().replace(TOKEN_PLACEHOLDER, token.encode())
    actions = {
        "/api/start": (("premise",), (), lambda body: writer.start(string(body, "premise"))),
        "/api/step": ((), ("plan",), lambda body: writer.step(body.get("plan"))),
        "/api/plan": (("index", "text"), (),
                      lambda body: writer.edit_plan(integer(body, "index"), string(body, "text"))),
        "/api/short_term": (("text",), (), lambda body: writer.edit_short_term(string(body, "text"))),
        "/api/paragraph": (("id", "text"), (),
                           lambda body: edit_paragraph(writer, integer(body, "id"), string(body, "text"))),
    }

    class Handler(BaseHTTPRequestHandler):
        timeout = SOCKET_TIMEOUT

        def log_message(self, *args) -> None:  # keep the terminal for the writer's own output
            pass

        def end_headers(self) -> None:
            for name, value in SECURITY_HEADERS.items():
                self.send_header(name, value)
            super().end_headers()

        def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, payload: dict) -> None:
            self._send(status, json.dumps(payload).encode())

        def _check_sender(self, api: bool) -> None:
            """RequestError 403 unless the request names this server in ``Host`` (and ``Origin``, if sent) and,
            for ``/api/``, carries the session token."""
            served = {f"{name}:{self.server.server_address[1]}" for name in {host, "localhost", "127.0.0.1"}}
            if self.headers.get("Host") not in served:
                raise RequestError(403, f"Host {self.headers.get('Host')!r} refused: this server answers "
                                   f"{sorted(served)} only")
            origin = self.headers.get("Origin")
            if origin is not None and origin not in {f"http://{address}" for address in served}:
                raise RequestError(403, f"Origin {origin!r} refused: only this server's own page may call it")
            if api and not hmac.compare_digest(self.headers.get(TOKEN_HEADER, "").encode(), token.encode()):
                raise RequestError(403, f"missing or wrong {TOKEN_HEADER} header: use the page this server serves")

        def _read_body(self) -> object:
            """The request's JSON body (RequestError for a bad type, length or text)."""
            media_type = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
            if media_type != "application/json":
                raise RequestError(415, f"Content-Type must be application/json, got {media_type or None!r}")
            length = self.headers.get("Content-Length")
            if length is None:
                raise RequestError(411, "a Content-Length header is required")
            if not re.fullmatch(r"[0-9]{1,12}", length.strip()):
                raise RequestError(400, f"Content-Length must be a non-negative integer, got {length!r}")
            if int(length) > MAX_BODY:
                raise RequestError(413, f"the request body may have at most {MAX_BODY} bytes, got {int(length)}")
            try:
                return json.loads(self.rfile.read(int(length)))
            except (UnicodeDecodeError, json.JSONDecodeError) as error:
                raise RequestError(400, f"the request body is not JSON: {error}") from None

        def _refuse(self, error: RequestError) -> None:
            self.close_connection = True  # an unread body must not be taken for the next request
            self._json(error.status, {"error": str(error)})

        def do_GET(self) -> None:
            url = urlparse(self.path)
            try:
                self._check_sender(api=url.path != "/")
            except RequestError as error:
                return self._refuse(error)
            if url.path == "/":
                return self._send(200, page, "text/html; charset=utf-8")
            if url.path == "/api/state":
                return self._handle(lambda: writer_state(writer))
            if url.path == "/api/search":
                query = parse_qs(url.query).get("q", [""])[0]
                return self._handle(lambda: {"results": [
                    {"id": i.id, "kind": i.kind, "text": i.text, "score": i.score}
                    for i in writer.memory.search(query, k=5, kind=None)]})
            self._json(404, {"error": f"no such page {url.path!r}"})

        def do_POST(self) -> None:
            try:
                self._check_sender(api=True)
                if urlparse(self.path).path not in actions:
                    raise RequestError(404, f"no such action {self.path!r}")
                required, optional, action = actions[urlparse(self.path).path]
                body = fields(self._read_body(), required, optional)
            except RequestError as error:
                return self._refuse(error)
            self._handle(lambda: (action(body), writer_state(writer))[1])

        def _handle(self, work) -> None:
            try:
                with lock:
                    payload = work()
            except RequestError as error:
                return self._json(error.status, {"error": str(error)})
            except (KeyError, ValueError, IndexError, TypeError) as error:
                return self._json(400, {"error": f"{type(error).__name__}: {error}"})
            except Exception as error:  # noqa: BLE001  (shown on the page; the store is unchanged)
                return self._json(500, {"error": f"{type(error).__name__}: {error}"})
            self._json(200, payload)

    server = ThreadingHTTPServer((host, port), Handler)
    server.token = token
    return server
