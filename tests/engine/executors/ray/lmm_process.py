"""An OpenAI-compatible LMM server in its own process (the fake LMM behind
tests/helpers/openai_server.py) for the Ray engine-death test. It prints its URL once listening,
appends one line per chat request it receives to LOG, and with KILL_AT kills itself (SIGKILL, as
an OOM kill would) when the KILL_AT-th request arrives, before answering it.

    python -m tests.engine.executors.ray.lmm_process PORT LOG [KILL_AT]   (the repository root on PYTHONPATH)
"""
import os
import signal
import sys

from tests.helpers.fake_lmm import FakeLMM
from tests.helpers.openai_server import LMMServer


class Logged(FakeLMM):
    def __init__(self, log: str, kill_at: int | None):
        super().__init__()
        self.log, self.kill_at, self.seen = open(log, "a", buffering=1), kill_at, 0

    async def generate(self, requests):
        for _ in requests:
            self.seen += 1
            self.log.write(f"{self.seen}\n")
            if self.kill_at is not None and self.seen >= self.kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
        return await super().generate(requests)


if __name__ == "__main__":
    port, log = int(sys.argv[1]), sys.argv[2]
    kill_at = int(sys.argv[3]) if len(sys.argv) > 3 else None
    server = LMMServer(Logged(log, kill_at), port=port).start()
    print(server.url, flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    server.stop()
