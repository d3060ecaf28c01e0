"""``python -m tests.engine.serve.serve_main PORT [DRAIN_TIMEOUT_S]``: kbridge serve on the tiny dense models and a slow
FakeLMM (every request of sample ids starting "slow" takes 1 s; "hang" ones block a thread for
good, as a wedged backend would), for the SIGTERM tests; prints how each job ended."""
import asyncio
import dataclasses
import json
import sys
import threading

from tests.helpers.fake_lmm import FakeLMM
from kbridge.engine.api import Engine
from kbridge.engine.config import build_config
from kbridge.engine.serve.app import serve


class SlowLMM(FakeLMM):
    async def generate(self, requests):
        if any(r.sample_id.startswith("hang") for r in requests):
            await asyncio.to_thread(threading.Event().wait)
        if any(r.sample_id.startswith("slow") for r in requests):
            await asyncio.sleep(1.0)
        return await super().generate(requests)


cfg = build_config("tiny")
if len(sys.argv) > 2:
    cfg = dataclasses.replace(cfg, serve=dataclasses.replace(cfg.serve, drain_timeout_s=float(sys.argv[2])))
eng = Engine(cfg)
eng.loaders["lmm"] = lambda _: SlowLMM()
svc = serve(eng, "127.0.0.1", int(sys.argv[1]))
print(json.dumps({j.sample.sample_id: j.status for j in svc.jobs.values()}), flush=True)
