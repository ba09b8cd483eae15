"""Servers for the tests of ``openai:`` specs: ``transformers serve``, a fault-injecting proxy, a stub.

- :func:`transformers_serve` starts ``transformers serve`` on 127.0.0.1 and a
  free port, waits until it answers, and always stops it.
- :class:`FaultProxy` forwards to an upstream server and answers the first
  requests with the faults it is given, in order: ``429`` (with
  ``Retry-After``), ``503``, ``drop`` (the connection closed without an
  answer), ``slow`` (forwarded after a pause the client waits out) and
  ``stall`` (no answer for a while, then the connection closed: a client
  with a shorter timeout has given up by then).
  It counts the answers it delivered per prompt, so a test can check that
  every case was answered exactly once.
- :class:`Stub` answers from a function, for what no real server here does
  (completions with ``echo`` and ``logprobs``, as vLLM gives them).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

_S = TypeVar("_S", bound="Stub")
#: What a stub's handler returns: (status, headers, JSON body), or None to drop the connection.
Answer = tuple[int, dict[str, str], Any] | None


def free_port() -> int:
    """A TCP port nothing listens on now (127.0.0.1)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def request_key(body: dict[str, Any]) -> str:
    """What a request asks (model and prompt or messages), as one string."""
    prompt = body.get("prompt", body.get("messages"))
    return json.dumps([body.get("model"), prompt], sort_keys=True)


@contextlib.contextmanager
def transformers_serve(log: Path, *, timeout: float = 60.0) -> Iterator[str]:
    """``transformers serve`` on 127.0.0.1 and a free port; yields its base URL (``.../v1``).

    The server loads models by the local path a request names. It is stopped
    when the block ends, however it ends (and killed if it does not stop).

    Raises:
        RuntimeError: it exited or did not answer within ``timeout`` seconds
            (the message ends with its log).
    """
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_OFFLINE": "1"}
    code = "import sys; from transformers.cli.transformers import main; sys.argv[0] = 'transformers'; main()"
    args = ["serve", "--host", "127.0.0.1", "--port", str(port), "--device", "cpu", "--log-level", "error"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", code, *args], stdout=out, stderr=subprocess.STDOUT, env=env
        )
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"transformers serve exited with {proc.returncode}: {log.read_text()[-2000:]}"
                )
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"transformers serve did not answer in {timeout:g}s: {log.read_text()[-2000:]}"
                )
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False


class Stub:
    """An HTTP server on 127.0.0.1 whose POST answers come from ``handler(path, headers, body)``.

    Attributes:
        url: Its base URL (``http://127.0.0.1:PORT/v1``).
        seen: ``(path, body, headers)`` of every POST, in order.
    """

    def __init__(
        self,
        handler: Callable[[str, dict[str, str], dict[str, Any]], Answer],
        port: int = 0,
        models: list[dict[str, Any]] | None = None,
    ):
        self.handler = handler
        self.models = models
        self.seen: list[tuple[str, dict[str, Any], dict[str, str]]] = []
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self.answer(stub.get(self.path, {k.lower(): v for k, v in self.headers.items()}), None)

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                headers = {k.lower(): v for k, v in self.headers.items()}
                with stub.lock:
                    stub.seen.append((self.path, body, headers))
                self.answer(stub.handler(self.path, headers, body), body)

            def answer(self, answer: Answer, body: dict[str, Any] | None) -> None:
                """Write an answer (None: drop the connection); a POST's delivery is counted."""
                if answer is None:
                    self.close_connection = True
                    with contextlib.suppress(OSError):
                        self.connection.shutdown(socket.SHUT_RDWR)
                    return
                status, extra, payload = answer
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    for k, v in {"content-type": "application/json", **extra}.items():
                        self.send_header(k, v)
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    self.wfile.flush()
                except OSError:  # the client gave up (a stalled answer): nothing was delivered
                    return
                if body is not None:
                    stub.delivered(self.path, body, status)

        self._server = _Server(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def get(self, path: str, headers: dict[str, str]) -> Answer:
        """A GET's answer: the model list given, else 404."""
        if path.endswith("/models") and self.models is not None:
            return 200, {}, {"object": "list", "data": self.models}
        return 404, {}, {"error": {"message": f"no {path} here"}}

    def delivered(self, path: str, body: dict[str, Any], status: int) -> None:
        """Called for every answer written to the client (a proxy counts them)."""

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self: _S) -> _S:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FaultProxy(Stub):
    """Forwards to ``upstream``; the first requests get ``faults`` instead, one each, in order.

    Attributes:
        answered: prompt key (:func:`request_key`) -> answers with status 200 delivered.
        applied: the faults applied, in order.
        stall: seconds a ``stall`` holds the request before closing it unanswered.
        slow: seconds a ``slow`` answer waits before it is forwarded.
    """

    def __init__(
        self,
        upstream: str,
        faults: Sequence[str] = (),
        *,
        slow: float = 0.3,
        stall: float = 2.5,
        port: int = 0,
    ) -> None:
        self.upstream = upstream.rstrip("/")
        self.faults = list(faults)
        self.applied: list[str] = []
        self.answered: Counter[str] = Counter()
        self.slow, self.stall = slow, stall
        super().__init__(self._handle, port)

    def _next_fault(self) -> str | None:
        with self.lock:
            if not self.faults:
                return None
            fault = self.faults.pop(0)
            self.applied.append(fault)
            return fault

    def _handle(self, path: str, headers: dict[str, str], body: dict[str, Any]) -> Answer:
        fault = self._next_fault()
        if fault == "429":
            return 429, {"retry-after": "1"}, {"error": {"message": "rate limited"}}
        if fault == "503":
            return 503, {}, {"error": {"message": "upstream unavailable"}}
        if fault == "drop":
            return None
        if fault == "stall":
            time.sleep(self.stall)
            return None
        if fault == "slow":
            time.sleep(self.slow)
        return self._forward(path, headers, body)

    def get(self, path: str, headers: dict[str, str]) -> Answer:
        """GETs (the model list) are forwarded, without faults."""
        return self._forward(path, headers, None)

    def _forward(self, path: str, headers: dict[str, str], body: dict[str, Any] | None) -> Answer:
        target = urllib.parse.urlsplit(self.upstream)
        conn = http.client.HTTPConnection(target.hostname or "127.0.0.1", target.port, timeout=120)
        try:
            upstream_path = target.path.removesuffix("/v1") + path
            if body is None:
                conn.request("GET", upstream_path)
            else:
                conn.request("POST", upstream_path, json.dumps(body), {"content-type": "application/json"})
            response = conn.getresponse()
            data = response.read()
            return response.status, {}, data
        finally:
            conn.close()

    def delivered(self, path: str, body: dict[str, Any], status: int) -> None:
        if status == 200:
            with self.lock:
                self.answered[request_key(body)] += 1
