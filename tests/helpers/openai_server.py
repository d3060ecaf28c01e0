"""A small OpenAI-compatible server on loopback that serves any kbridge LMM backend (the tiny hf one
in the tests), with injectable faults.

``POST /v1/chat/completions`` (``response_format`` json_schema, ``seed``, ``max_tokens``,
``temperature``), ``GET /v1/models``, ``GET /health``. Handler threads queue requests; one batcher
thread decodes whatever is queued together (continuous batching in miniature), so requests in
flight at once share a generate() call as they would on vLLM. Faults: ``fail_next`` (HTTP 500),
``malformed_next`` (an answer that is not JSON), ``delay_s`` (slow answers), ``die_after`` (after
that many answers every connection is dropped unanswered, as a killed server's would be),
``empty_next`` (an empty answer), ``off_schema_next`` (valid JSON that violates the schema),
``too_many_next`` (HTTP 429), ``cut_next`` (the connection drops halfway through the body).
Stdlib only; the server stops itself on ``stop()`` or after ``max_lifetime_s``.
"""
from __future__ import annotations

import asyncio
import json
import queue
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from kbridge.engine.lmm import Request
from kbridge.engine.lmm.openai_format import from_openai


class _Server(ThreadingHTTPServer):
    request_queue_size = 128  # the stdlib's 5 resets connections when 16 clients connect at once
    daemon_threads = True


@dataclass
class Faults:
    fail_next: int = 0
    malformed_next: int = 0
    delay_s: float = 0.0
    die_after: int | None = None
    empty_next: int = 0
    off_schema_next: int = 0
    too_many_next: int = 0
    cut_next: int = 0

    def take(self, name: str) -> bool:
        """Use up one of the ``name`` faults (call under the server's lock)."""
        n = getattr(self, name)
        if n > 0:
            setattr(self, name, n - 1)
        return n > 0


@dataclass
class _Job:
    req: Request
    done: threading.Event = field(default_factory=threading.Event)
    result: object = None


class LMMServer:
    def __init__(self, backend, port: int = 0, max_batch: int = 16, max_lifetime_s: float = 600.0,
                 window_s: float = 0.01):
        self.backend, self.max_batch, self.window_s = backend, max_batch, window_s
        self.faults = Faults()
        self.bodies: list[dict] = []
        self.headers: list[dict] = []
        """Each chat request's HTTP headers, lower-cased names (trace-context tests)."""
        self.answered = 0
        self.batches: list[int] = []
        self._q: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.httpd = _Server(("127.0.0.1", port), _handler(self))
        self.httpd.daemon_threads = True
        self._threads = [threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True),
                         threading.Thread(target=self._batcher, daemon=True)]
        self._timer = threading.Timer(max_lifetime_s, self.stop)
        self._timer.daemon = True

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> "LMMServer":
        for t in self._threads:
            t.start()
        self._timer.start()
        return self

    def stop(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._timer.cancel()
        self.httpd.shutdown()
        self.httpd.server_close()
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(timeout=30)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def dead(self) -> bool:
        f = self.faults
        return self._stop.is_set() or (f.die_after is not None and self.answered >= f.die_after)

    def _batcher(self) -> None:
        # one event loop for the server's life: its executor thread (where a backend's to_thread
        # work runs) is reused, and torch does not spin up a new thread pool for every batch
        loop = asyncio.new_event_loop()
        try:
            self._batch_loop(loop)
        finally:
            loop.close()

    def _batch_loop(self, loop) -> None:
        while not self._stop.is_set():
            try:
                jobs = [self._q.get(timeout=0.05)]
            except queue.Empty:
                continue
            # gather what arrives within a few ms: requests sent together decode together
            until = time.monotonic() + self.window_s
            while len(jobs) < self.max_batch:
                try:
                    jobs.append(self._q.get(timeout=max(0.0, until - time.monotonic())))
                except queue.Empty:
                    break
            self.batches.append(len(jobs))
            try:
                gens = loop.run_until_complete(self.backend.generate([j.req for j in jobs]))
            except Exception as e:  # reported to every waiting handler as a 500
                gens = [e] * len(jobs)
            for j, g in zip(jobs, gens):
                j.result = g
                j.done.set()

    def generate(self, req: Request, timeout: float = 300.0):
        job = _Job(req)
        self._q.put(job)
        if not job.done.wait(timeout):
            raise TimeoutError("generation did not finish")
        if isinstance(job.result, Exception):
            raise job.result
        return job.result


def _to_request(body: dict) -> Request:
    fmt = body.get("response_format") or {}
    schema = fmt["json_schema"]["schema"] if fmt.get("type") == "json_schema" else None
    return Request(from_openai(body["messages"]), schema, int(body.get("seed") or 0),
                   int(body.get("max_tokens") or body.get("max_completion_tokens") or 256),
                   float(body.get("temperature", 1.0)), "http", "http", 0)


def _handler(server: LMMServer):
    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body are separate writes: no 40 ms delayed-ACK stall

        def log_message(self, *args):  # quiet
            pass

        def _send(self, code: int, obj) -> None:
            raw = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
            try:
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout test)
                self.close_connection = True

        def _drop(self) -> None:
            self.close_connection = True  # no answer at all: the client sees a disconnect

        def do_GET(self):
            if server.dead():
                return self._drop()
            if self.path == "/health":
                return self._send(200, {})
            if self.path == "/v1/models":
                return self._send(200, {"object": "list", "data": [{"id": server.backend.model_id, "object": "model"}]})
            self._send(404, {"error": {"message": "not found"}})

        def do_POST(self):
            n = int(self.headers.get("Content-Length", 0))
            body = json.loads(self.rfile.read(n) or b"{}")
            if server.dead():
                return self._drop()
            if self.path != "/v1/chat/completions":
                return self._send(404, {"error": {"message": "not found"}})
            f = server.faults
            with server._lock:
                server.bodies.append(body)
                server.headers.append({k.lower(): v for k, v in self.headers.items()})
                fail = f.fail_next > 0
                f.fail_next -= fail
                malformed = not fail and f.malformed_next > 0
                f.malformed_next -= malformed
                too_many = not fail and f.take("too_many_next")
                answer_fault = next((k for k in ("empty_next", "off_schema_next", "cut_next")
                                     if not (fail or malformed or too_many) and f.take(k)), None)
            if fail:
                return self._send(500, {"error": {"message": "injected failure"}})
            if too_many:
                return self._send(429, {"error": {"message": "rate limited (injected)"}})
            if f.delay_s:
                time.sleep(f.delay_s)
            try:
                req = _to_request(body)
            except (KeyError, ValueError, TypeError) as e:
                return self._send(400, {"error": {"message": f"bad request: {e}"}})
            gen = server.generate(req)
            if server.dead():
                return self._drop()
            with server._lock:
                server.answered += 1
            text = "{not json" if malformed else gen.text
            text = {"empty_next": "", "off_schema_next": '{"unexpected": 1}'}.get(answer_fault, text)
            if answer_fault == "cut_next":
                raw = json.dumps({"choices": [{"message": {"content": text}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw[:len(raw) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self._send(200, {"id": "cmpl", "object": "chat.completion", "model": server.backend.model_id,
                             "choices": [{"index": 0, "finish_reason": "stop",
                                          "message": {"role": "assistant", "content": text}}],
                             "usage": {"prompt_tokens": gen.prompt_tokens, "completion_tokens": gen.generated_tokens,
                                       "total_tokens": gen.prompt_tokens + gen.generated_tokens}})

    return H
