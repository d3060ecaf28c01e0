"""The in-process vLLM backend on the CPU, vLLM faked at its boundary: one AsyncLLM batching the
requests of concurrent callers, images handed over as PIL images, structured outputs per request."""
import asyncio
import sys
import types

import torch


def _fake_vllm(monkeypatch, expect: int):
    """vLLM at its boundary: AsyncLLM.generate answers only once ``expect`` requests are in flight."""
    import importlib.machinery

    seen = {"prompts": [], "params": [], "args": None}
    mods = {n: types.ModuleType(n) for n in ("vllm", "vllm.engine", "vllm.engine.arg_utils", "vllm.v1",
                                              "vllm.v1.engine", "vllm.v1.engine.async_llm", "vllm.sampling_params",
                                              "vllm.platforms", "vllm.config")}
    mods["vllm"].__spec__ = importlib.machinery.ModuleSpec("vllm", None)
    mods["vllm"].SamplingParams = lambda **kw: kw
    mods["vllm.sampling_params"].StructuredOutputsParams = lambda **kw: kw
    mods["vllm.engine.arg_utils"].AsyncEngineArgs = lambda **kw: kw
    mods["vllm.platforms"].current_platform = types.SimpleNamespace(is_cuda=lambda: True, is_cpu=lambda: False)
    mods["vllm.config"].StructuredOutputsConfig = lambda **kw: kw

    class AsyncLLM:
        def __init__(self):
            self.all_in = asyncio.Event()
            self.loop = asyncio.get_running_loop()  # created on the backend's own loop

        @classmethod
        def from_engine_args(cls, args):
            seen["args"] = args
            return cls()

        async def generate(self, prompt, params, request_id):
            assert asyncio.get_running_loop() is self.loop
            seen["prompts"].append(prompt)
            seen["params"].append(params)
            if len(seen["prompts"]) >= expect:
                self.all_in.set()
            await asyncio.wait_for(self.all_in.wait(), 10)
            for n in (1, 2):  # cumulative outputs, the last one complete
                out = types.SimpleNamespace(text=f"{params['seed']}:{n}", token_ids=[0] * n)
                yield types.SimpleNamespace(outputs=[out], prompt_token_ids=[0] * 7)

    mods["vllm.v1.engine.async_llm"].AsyncLLM = AsyncLLM
    for n, m in mods.items():
        monkeypatch.setitem(sys.modules, n, m)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    return seen


def test_async_engine_batches_across_callers_with_pil_images(cfg, monkeypatch):
    from PIL import Image

    from kbridge.engine import zoo
    from kbridge.engine.lmm import Request
    from kbridge.engine.lmm.vllm_local import VLLMBackend

    seen = _fake_vllm(monkeypatch, expect=4)
    be = VLLMBackend(zoo.resolve("lmm", cfg), cfg.lmm, "h100")
    img = Image.new("RGB", (32, 32), (200, 10, 10))
    msg = [{"role": "user", "content": [{"type": "text", "text": "what is here?"}, {"type": "image", "image": img}]}]
    reqs = [Request(msg, {"type": "object"} if i % 2 else None, 100 + i, 8, 0.3, f"s{i}", "t", 1) for i in range(4)]

    async def two_callers():  # two pipeline batches in flight: a lock would deadlock the fake
        return await asyncio.gather(be.generate(reqs[:2]), be.generate(reqs[2:]))

    a, b = asyncio.run(two_callers())
    assert [g.text for g in a + b] == ["100:2", "101:2", "102:2", "103:2"]
    assert a[0].prompt_tokens == 7 and a[0].generated_tokens == 2
    p = seen["prompts"][0]
    assert p["multi_modal_data"]["image"][0] is img  # the PIL image itself: no PNG / base64 round trip
    assert "<|image_pad|>" in p["prompt"] and "what is here?" in p["prompt"]
    by_seed = {q["seed"]: q for q in seen["params"]}
    assert by_seed[101]["structured_outputs"] == {"json": {"type": "object"}} and by_seed[100]["structured_outputs"] is None
    assert seen["args"]["tensor_parallel_size"] == 1 and seen["args"]["generation_config"] == "vllm"
    be.close()
