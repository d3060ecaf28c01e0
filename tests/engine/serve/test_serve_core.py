"""The executor's long-lived mode (async source, hooks, per-row configuration) and the [serve]
config section; no models."""
from __future__ import annotations

import asyncio
import dataclasses

import pytest
from typer.testing import CliRunner

from kbridge.engine.config import ConfigError, build_config
from kbridge.engine.executors.local import Hooks, stream
from kbridge.engine.models import Models
from kbridge.engine.rows import Row
from kbridge.engine.stages import Ctx, Stage
from kbridge.engine.types import Sample


def test_async_source_hooks_cancellation_and_per_row_configs(cfg):
    run_cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, rows_in_flight=16, batch_wait_ms=50))
    other = dataclasses.replace(run_cfg, generation=dataclasses.replace(run_cfg.generation, candidates=2))

    def work(name):
        def fn(rows, ctx):
            # a call sees rows of one configuration, and ctx.cfg is that configuration
            assert {r.cfg or run_cfg for r in rows} == {ctx.cfg}
            return [r.replace(best=f"{name}:{ctx.cfg.generation.candidates}") for r in rows]
        return fn

    stages = [Stage(n, work(n), "scorer", lambda r, c: True, lambda c: 8) for n in ("a", "b")]
    calls: list[tuple[str, list[str]]] = []
    hooks = Hooks(on_stage=lambda st, rows: calls.append((st, [r.sample_id for r in rows])),
                  cancelled=lambda r: r.sample_id == "t:3")
    written: list[Row] = []

    async def main():
        q: asyncio.Queue = asyncio.Queue()

        async def source():
            while (r := await q.get()) is not None:
                yield r

        task = asyncio.ensure_future(stream(source(), stages, Ctx(cfg=run_cfg, domain=None, models=Models()),
                                            written.append, hooks=hooks))
        for i in range(6):
            q.put_nowait(Row(Sample(f"t:{i}", i, "x", None, "image"), cfg=other if i % 2 else None))
        await asyncio.sleep(0.3)  # the stream stays open while the source is
        assert not task.done() and set(hooks.queues) == {"a", "b"}
        q.put_nowait(None)  # closing the source drains what was admitted
        return await asyncio.wait_for(task, 30)

    assert asyncio.run(main()) == 6
    by_id = {r.sample_id: r for r in written}
    assert len(by_id) == 6
    assert by_id["t:3"].error is not None and by_id["t:3"].error.message == "cancelled"
    assert by_id["t:1"].best == "b:2" and by_id["t:0"].best == f"b:{cfg.generation.candidates}"
    for st, ids in calls:  # no call mixes rows of the two configurations
        assert len({int(i.split(":")[1]) % 2 for i in ids}) == 1, (st, ids)
    assert "t:3" not in {i for _, ids in calls for i in ids}


def test_serve_section_in_toml_and_hash(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("[serve]\nmax_queue = 3\nmax_body_mb = 1.5\n")
    c = build_config("tiny", f)
    assert c.serve.max_queue == 3 and c.serve.max_body_mb == 1.5
    assert c.result_hash() == build_config("tiny").result_hash()  # limits never change results
    f.write_text("[serve]\nmax_queues = 3\n")
    with pytest.raises(ConfigError, match="max_queues"):
        build_config("tiny", f)


def test_cli_refuses_an_unset_key_variable_and_bad_limits(monkeypatch):
    from kbridge.cli.app import app

    monkeypatch.delenv("KBRIDGE_TEST_NO_SUCH_KEY", raising=False)
    r = CliRunner().invoke(app, ["serve", "--api-key-env", "KBRIDGE_TEST_NO_SUCH_KEY"])
    assert r.exit_code == 2 and "KBRIDGE_TEST_NO_SUCH_KEY" in r.output
    r = CliRunner().invoke(app, ["serve", "--max-queue", "0"])
    assert r.exit_code == 2 and "[serve]" in r.output
