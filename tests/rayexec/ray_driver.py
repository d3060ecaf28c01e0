"""A driver process for the kill-the-driver test: joins the test's Ray cluster and runs the tiny
demo with the fake LMM (slow on some samples, so the run is still going when it is killed).

    python ray_driver.py OUT RAY_ADDRESS
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ray  # noqa: E402

import fake_lmm  # noqa: E402
from kbridge.engine.api import Engine  # noqa: E402
from kbridge.engine.config import build_config  # noqa: E402

SLOW = {"demo:10", "demo:11"}  # the last two samples: every LMM answer takes DELAY seconds
DELAY = 4.0

if __name__ == "__main__":
    out, address = sys.argv[1], sys.argv[2]
    ray.cloudpickle.register_pickle_by_value(fake_lmm)
    eng = Engine(build_config("tiny"))
    lmm = fake_lmm.FakeLMM(slow=SLOW, delay=DELAY)
    eng.loaders["lmm"] = lambda: lmm
    eng.run(out=out, executor="ray", ray_address=address)
