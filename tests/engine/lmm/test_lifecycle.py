"""A run owns the LMM server its profile names: ``kbridge run`` starts the profile's ``vllm serve``
when the LMM slot loads and the release stops it (a fake ``vllm`` executable stands in)."""
import pytest


_FAKE_VLLM = r'''#!/usr/bin/env python3
"""Stands in for `vllm serve MODEL --host H --port P ...`: the two routes vLLM's server has that the
HTTP backend uses at start (/health, /v1/models); records its argv; exits on SIGTERM."""
import json, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
a = sys.argv
open(a[0] + ".argv", "a").write(json.dumps(a[1:]) + "\n")
host, port, model = a[a.index("--host") + 1], int(a[a.index("--port") + 1]), a[a.index("--served-model-name") + 1]
class H(BaseHTTPRequestHandler):
    def log_message(self, *x): pass
    def do_GET(self):
        body = json.dumps({"data": [{"id": model}]}).encode() if self.path.endswith("/models") else b"{}"
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
HTTPServer((host, port), H).serve_forever()
'''


def test_phased_http_profile_starts_the_server_and_release_stops_it(tmp_path):
    """4090x4-72b: `kbridge run` starts the profile's `vllm serve` when the LMM slot loads and the
    phased release (Models.release → close(), as in tests/engine/executors/test_phased.py) stops it,
    process group and port, before render. A server already on the port is refused in one line rather
    than shared."""
    import json
    import os
    import socket

    import httpx2 as httpx

    from kbridge.engine.config import build_config
    from kbridge.engine.lmm.lifecycle import ServedBackend
    from kbridge.engine.lmm.serving import ServeError
    from kbridge.engine.models import Models

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    fake = tmp_path / "vllm"
    fake.write_text(_FAKE_VLLM)
    fake.chmod(0o755)
    cfg = build_config("4090x4-72b", overrides={"lmm": {"url": f"http://127.0.0.1:{port}/v1"}})
    assert cfg.lmm.manage_server and cfg.run.schedule == "phased"
    backend = ServedBackend(cfg, str(tmp_path / "Qwen2-VL-72B"), vllm_bin=str(fake), wait_s=60, stop_s=10)
    pid = backend.server.proc.pid
    assert backend.model_id == "http:Qwen2-VL-72B"
    argv = json.loads((tmp_path / "vllm.argv").read_text().splitlines()[0])
    assert argv[argv.index("--tensor-parallel-size") + 1] == "4"
    assert argv[argv.index("--gpu-memory-utilization") + 1] == "0.95"
    with pytest.raises(ServeError, match="already answers"):
        ServedBackend(cfg, "m", vllm_bin=str(fake), wait_s=5)
    Models(lmm=backend).release("lmm")
    assert backend.server.proc.returncode is not None  # exited, reaped
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)  # nothing of its process group is left
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
