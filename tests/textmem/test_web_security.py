"""The writer's web server answers its own page only: real HTTP requests against the running server."""

import http.client
import json
import threading

import pytest
from conftest import memlm_write, numbered_answers

from memlm.textmem import RecurrentWriter, ScriptedBackend, TextMemory
from memlm.textmem.web import TOKEN_HEADER, make_server

TIMEOUT = 30  # seconds: a server that hangs on a request fails the test instead of hanging it


@pytest.fixture
def served(tmp_path, embedder):
    """A started story behind a running server on 127.0.0.1 (a free port)."""
    memory = TextMemory(tmp_path / "story.db", embedder=embedder)
    writer = RecurrentWriter(memory, ScriptedBackend(numbered_answers()))
    writer.start("A story about numbers.")
    server = make_server(writer, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server, writer
    server.shutdown()
    server.server_close()
    memory.close()


def send(server, method: str, path: str, body: bytes | None = None, **headers: str) -> tuple[int, dict, bytes]:
    """``(status, headers, body)`` of one request; by default from the page itself: this server's ``Host`` and
    ``Origin``, the session token and, with a body, ``Content-Type: application/json``. A header given as ``""``
    is left out."""
    port = server.server_address[1]
    defaults = {"Host": f"127.0.0.1:{port}", "Origin": f"http://127.0.0.1:{port}", TOKEN_HEADER: server.token}
    if body is not None:
        defaults |= {"Content-Type": "application/json", "Content-Length": str(len(body))}
    headers = {name.replace("_", "-"): value for name, value in headers.items()}
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for name, value in (defaults | headers).items():
            if value:
                connection.putheader(name, value)
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def post(server, path: str, payload, **headers: str) -> tuple[int, dict]:
    status, _, body = send(server, "POST", path, json.dumps(payload).encode(), **headers)
    return status, json.loads(body)


def story(writer) -> tuple[int, list[str], str]:
    return writer.state["step"], writer.paragraphs(), writer.short_term()


def test_the_page_and_its_calls_work(served):
    server, writer = served
    status, headers, page = send(server, "GET", "/", Origin="", **{TOKEN_HEADER: ""})
    assert status == 200 and f'content="{server.token}"'.encode() in page  # the page carries the token
    assert headers["Content-Security-Policy"] == "frame-ancestors 'none'" and headers["X-Frame-Options"] == "DENY"
    status, headers, body = send(server, "GET", "/api/state", Origin="")
    assert status == 200 and json.loads(body)["step"] == 1 and headers["X-Frame-Options"] == "DENY"
    paragraph = writer.memory.items("paragraph")[0].id
    assert post(server, "/api/paragraph", {"id": paragraph, "text": "Edited paragraph."})[0] == 200
    assert post(server, "/api/short_term", {"text": "Edited memory."})[0] == 200
    assert post(server, "/api/plan", {"index": 1, "text": "Edited plan."})[0] == 200
    status, state = post(server, "/api/step", {"plan": 1})
    assert status == 200 and state["step"] == 2 and state["paragraphs"][0]["text"] == "Edited paragraph."
    assert "Edited memory." in writer.backend.prompts[-1] and "Edited plan." in writer.backend.prompts[-1]
    assert post(server, "/api/step", {})[0] == 200 and writer.state["step"] == 3  # no plan: the chooser's
    status, _, body = send(server, "GET", "/api/search?q=numbers", Origin="")
    assert status == 200 and json.loads(body)["results"]
    port = server.server_address[1]  # the page reached as localhost
    assert send(server, "GET", "/api/state", Host=f"localhost:{port}", Origin=f"http://localhost:{port}")[0] == 200


@pytest.mark.parametrize(("headers", "status", "message"), [
    ({"Content-Type": "text/plain"}, 415, "Content-Type must be application/json, got 'text/plain'"),
    ({"Content-Type": ""}, 415, "Content-Type must be application/json, got None"),
    ({"Origin": "http://evil.example"}, 403, "Origin 'http://evil.example' refused"),
    ({"Origin": "null"}, 403, "Origin 'null' refused"),
    ({"Host": "evil.example:80"}, 403, "Host 'evil.example:80' refused"),
    ({"Host": ""}, 403, "Host None refused"),
    ({TOKEN_HEADER: ""}, 403, f"missing or wrong {TOKEN_HEADER} header"),
    ({TOKEN_HEADER: "guessed"}, 403, f"missing or wrong {TOKEN_HEADER} header"),
])
def test_cross_site_writes_are_refused(served, headers, status, message):
    """The attack of the issue: a ``text/plain`` (no preflight) POST from another site would rewrite the memory
    and run a step. Each request here lacks one thing the page sends; none changes the story."""
    server, writer = served
    before = story(writer)
    for path, payload in (("/api/short_term", {"text": "Rewritten by another site."}), ("/api/step", {"plan": 0})):
        answer = post(server, path, payload, **headers)
        assert answer[0] == status and message in answer[1]["error"]
    assert story(writer) == before and len(writer.backend.prompts) == 1


@pytest.mark.parametrize("headers", [{"Host": "evil.example:8765"}, {"Origin": "http://evil.example"},
                                     {TOKEN_HEADER: ""}])
def test_cross_site_reads_are_refused(served, headers):
    """A rebound domain (spoofed ``Host``) reads neither the state nor the page with its token."""
    server, _ = served
    status, response_headers, body = send(server, "GET", "/api/state", **headers)
    assert status == 403 and b"A story about numbers" not in body and b"Paragraph number" not in body
    assert response_headers["X-Frame-Options"] == "DENY"
    if TOKEN_HEADER not in headers:
        status, _, body = send(server, "GET", "/", **headers)
        assert status == 403 and server.token.encode() not in body


@pytest.mark.parametrize(("length", "status", "message"), [
    ("-1", 400, "Content-Length must be a non-negative integer, got '-1'"),
    ("abc", 400, "Content-Length must be a non-negative integer, got 'abc'"),
    ("", 411, "a Content-Length header is required"),
    (str(1 << 30), 413, "at most 1048576 bytes"),
])
def test_a_malformed_content_length_is_answered_at_once(served, length, status, message):
    """Before, ``-1`` read until the client closed (the thread hung) and ``abc`` dropped the connection; the
    socket timeout makes a hang fail the test."""
    server, writer = served
    before = story(writer)
    answer, _, body = send(server, "POST", "/api/short_term", b'{"text": "x"}', Content_Length=length)
    assert answer == status and message in json.loads(body)["error"]
    assert story(writer) == before


@pytest.mark.parametrize(("path", "body", "message"), [
    ("/api/short_term", b"[1, 2]", "the request body must be a JSON object, got list"),
    ("/api/step", b'"plan"', "the request body must be a JSON object, got str"),
    ("/api/short_term", b"{not json", "the request body is not JSON"),
    ("/api/short_term", b"", "the request body is not JSON"),
    ("/api/short_term", b'{"text": "x", "premise": "y"}', "unknown ['premise']"),
    ("/api/plan", b'{"text": "x"}', "missing ['index']"),
    ("/api/plan", b'{"index": "1", "text": "x"}', "'index' must be an integer, got '1'"),
    ("/api/short_term", b'{"text": 5}', "'text' must be a string, got 5"),
    ("/api/paragraph", b'{"id": true, "text": "x"}', "'id' must be an integer, got True"),
])
def test_bad_bodies_are_400(served, path, body, message):
    server, writer = served
    before = story(writer)
    status, _, answer = send(server, "POST", path, body)
    assert status == 400 and message in json.loads(answer)["error"]
    assert story(writer) == before


def test_the_paragraph_call_edits_paragraphs_only(served):
    server, writer = served
    before = story(writer)
    for kind in ("short_term", "premise"):
        item = writer.memory.items(kind)[0]
        status, answer = post(server, "/api/paragraph", {"id": item.id, "text": "Rewritten through /api/paragraph."})
        assert status == 400 and f"item {item.id} is a {kind!r}, not a paragraph" in answer["error"]
        assert writer.memory.get(item.id).text == item.text
    status, answer = post(server, "/api/paragraph", {"id": 9999, "text": "x"})
    assert status == 400 and "no item with id 9999" in answer["error"]
    assert story(writer) == before


def test_the_page_is_served_on_a_loopback_address_only(tmp_path, embedder):
    with TextMemory(tmp_path / "story.db", embedder=embedder) as memory:
        writer = RecurrentWriter(memory, ScriptedBackend(numbered_answers()))
        for host in ("0.0.0.0", "192.168.1.5", "example.com"):
            with pytest.raises(ValueError, match=f"--host '{host}': the writer's page has no login"):
                make_server(writer, host=host, port=0)
    result = memlm_write("--store", str(tmp_path / "other.db"), "--backend", "http://127.0.0.1:9/v1", "--web",
                         "--host", "0.0.0.0")
    assert result.returncode != 0 and "served on a loopback address only" in result.stderr
    assert not (tmp_path / "other.db").exists()
