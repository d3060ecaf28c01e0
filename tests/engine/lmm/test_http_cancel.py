"""A cancelled LMM call over HTTP is cancelled at the server too: the request's connection is
closed (vLLM's OpenAI server aborts a request whose client went away). A bare socket server
stands in for the LMM server: it reads the request, never answers, and records the close."""
from __future__ import annotations

import asyncio
import dataclasses
import socket
import threading

from kbridge.engine.lmm import LMMClient, Request, RequestLog


def test_cancelling_an_http_lmm_call_closes_its_request(cfg):
    from kbridge.engine.lmm.vllm_http import HTTPBackend

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    got, closed = threading.Event(), threading.Event()

    def serve():
        conn, _ = srv.accept()
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            got.set()
            conn.settimeout(30)
            while True:
                try:
                    if not conn.recv(65536):  # the client closed the connection
                        closed.set()
                        return
                except OSError:
                    return

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    lm = dataclasses.replace(cfg.lmm, backend="http", url=f"http://127.0.0.1:{srv.getsockname()[1]}/v1",
                             served_model="m", retries=0, timeout_s=60.0)
    client = LMMClient(HTTPBackend(lm, check=False), RequestLog())
    req = Request([{"role": "user", "content": [{"type": "text", "text": "hello <|im_end|>"}]}], None, 1, 4, 1.0,
                  "s", "extract", 1)

    async def main():
        task = asyncio.ensure_future(client.complete([req]))
        assert await asyncio.to_thread(got.wait, 30), "the request never reached the server"
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        return await asyncio.to_thread(closed.wait, 30)

    try:
        assert asyncio.run(main()), "the cancelled request's connection stayed open"
    finally:
        srv.close()
