"""``python serve_main.py PORT``: kbridge serve on the tiny dense models and a slow FakeLMM (every
request of sample ids starting "slow" takes 1 s), for the SIGTERM test; prints how each job ended."""
import json
import sys

from fake_lmm import FakeLMM
from kbridge.engine.api import Engine
from kbridge.engine.config import build_config
from kbridge.engine.serve.app import serve


class SlowLMM(FakeLMM):
    async def generate(self, requests):
        import asyncio

        if any(r.sample_id.startswith("slow") for r in requests):
            await asyncio.sleep(1.0)
        return await super().generate(requests)


eng = Engine(build_config("tiny"))
eng.loaders["lmm"] = SlowLMM
svc = serve(eng, "127.0.0.1", int(sys.argv[1]))
print(json.dumps({j.sample.sample_id: j.status for j in svc.jobs.values()}), flush=True)
