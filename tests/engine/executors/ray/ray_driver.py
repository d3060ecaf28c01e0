"""A driver process for the kill-the-driver test: joins the test's Ray cluster and runs the tiny
demo with the fake LMM, one sample per block. The last sample's LMM answers take ten minutes, so
the run is certainly still going when the test kills it after the first results, and nothing
queues behind that sample (its block is the last).

    python -m tests.engine.executors.ray.ray_driver OUT RAY_ADDRESS   (the repository root on PYTHONPATH)
"""
import dataclasses
import sys

import ray

from kbridge.engine.api import Engine
from kbridge.engine.config import build_config
from tests.helpers import fake_lmm

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
