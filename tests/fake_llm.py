"""A fake OpenAI-compatible endpoint on 127.0.0.1 for the autointerp and LLM-judge tests."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

Answer = Callable[[dict[str, Any]], tuple[int, Any]]
"""Maps a recorded request (path, headers, JSON body) to (HTTP status, JSON payload or raw text)."""


def completion(text: str) -> dict[str, Any]:
    message = {"role": "assistant", "content": text}
    return {
        "object": "chat.completion",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
    }


class FakeLLM:
    """An HTTP server on 127.0.0.1 answering `/v1/chat/completions` and `/v1/models` with `answer`,
    recording every request (path, headers, JSON body)."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.requests: list[dict[str, Any]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _reply(self, body: dict[str, Any] | None) -> None:
                request = {"path": self.path, "headers": dict(self.headers), "body": body}
                fake.requests.append(request)
                status, payload = fake.answer(request)
                data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                self._reply(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))

            def do_GET(self) -> None:
                self._reply(None)

            def log_message(self, format: str, *args: Any) -> None:  # quiet: no request log
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def chats(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["path"].endswith("/chat/completions")]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
