"""A driver process for the kill-the-driver test: joins the test's Ray cluster and runs the tiny
demo with the fake LMM, one sample per block. The last sample's LMM answers take ten minutes, so
the run is certainly still going when the test kills it after the first results, and nothing
queues behind that sample (its block is the last).

    python ray_driver.py OUT RAY_ADDRESS
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dataclasses  # noqa: E402

import ray  # noqa: E402

import fake_lmm  # noqa: E402
from kbridge.engine.api import Engine  # noqa: E402
from kbridge.engine.config import build_config  # noqa: E402

SLOW = {"demo:11"}  # the last incomplete sample of the demo set
DELAY = 600.0

if __name__ == "__main__":
    out, address = sys.argv[1], sys.argv[2]
    ray.cloudpickle.register_pickle_by_value(fake_lmm)
    cfg = build_config("tiny")
    eng = Engine(dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, batch_size=1)))
    lmm = fake_lmm.FakeLMM(slow=SLOW, delay=DELAY)
    eng.loaders["lmm"] = lambda _: lmm
    eng.run(out=out, executor="ray", ray_address=address)
