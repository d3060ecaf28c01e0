import hashlib
from pathlib import Path

import pytest
import torch

from kbridge.engine import twins, zoo
from kbridge.engine.config import build_config


def _digest(d: Path) -> dict:
    return {str(f.relative_to(d)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(d.rglob("*")) if f.is_file()}


@pytest.mark.parametrize("name", ["lmm", "clip"])
def test_tiny_twins_build_deterministically(tmp_path, name):
    a, b = zoo.ensure_tiny(name, tmp_path / "a"), zoo.ensure_tiny(name, tmp_path / "b")
    da, db = _digest(a), _digest(b)
    assert da == db
    assert any(k.endswith(".safetensors") for k in da)


def test_real_weights_load_from_a_local_directory(cfg, tmp_path):
    """A user directory in Hugging Face layout goes through the same loading code."""
    from transformers import AutoTokenizer, CLIPImageProcessorPil, CLIPModel

    from kbridge.engine.rank.semantic import ClipScorer

    src = zoo.resolve("clip", cfg)
    user = tmp_path / "my-clip"
    CLIPModel.from_pretrained(src).save_pretrained(user)
    AutoTokenizer.from_pretrained(src).save_pretrained(user)
    CLIPImageProcessorPil.from_pretrained(src).save_pretrained(user)
    local = build_config("tiny", overrides={"models": {"clip": str(user)}})
    assert zoo.resolve("clip", local) == user
    entry = next(m for m in zoo.list_models(local) if m.name == "clip")
    assert entry.source == "path" and entry.ready and entry.size_bytes > 0
    a, b = ClipScorer(src), ClipScorer(zoo.resolve("clip", local))
    texts = ["a red cup on a table", "a cat"]
    assert torch.allclose(a.embed_texts(texts), b.embed_texts(texts), atol=1e-6)


def test_missing_directory_is_a_clear_error(tmp_path):
    cfg = build_config("tiny", overrides={"models": {"lmm": str(tmp_path / "nowhere")}})
    with pytest.raises(zoo.ModelNotFound, match="not a model directory.*Qwen2-VL-7B-Instruct"):
        zoo.resolve("lmm", cfg)


def test_list_models_reports_every_slot(cfg):
    rows = {m.name: m for m in zoo.list_models(cfg)}
    assert set(rows) == set(zoo.MODELS)
    assert all(m.source == "tiny" for m in rows.values())


def test_the_vllm_cpu_twin_is_a_deterministic_idefics3_with_vllm_cpu_head_size(tmp_path):
    """vLLM's CPU attention needs a text head size that is a multiple of 32; one 56-px image is
    4 tokens after the connector; the chat layout is the Qwen twin's with ``<image>``."""
    import json

    from transformers import AutoProcessor

    a, b = tmp_path / "a", tmp_path / "b"
    twins.build_tiny_idefics3(a)
    twins.build_tiny_idefics3(b)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    c = json.loads((a / "config.json").read_text())
    t = c["text_config"]
    assert c["architectures"] == ["Idefics3ForConditionalGeneration"]
    assert t["hidden_size"] // t["num_attention_heads"] == 32
    proc = AutoProcessor.from_pretrained(a)
    assert proc.image_seq_len == 4
    text = proc.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "x"}]}],
                                    add_generation_prompt=True, tokenize=False)
    assert text == "<|im_start|>user\n<image>x<|im_end|>\n<|im_start|>assistant\n"
    assert proc.tokenizer.convert_tokens_to_ids("<image>") == c["image_token_id"] < t["vocab_size"]


def test_a_peer_registers_its_own_twin_builder(tmp_path):
    """The zoo imports no peer: MIRe registers its twin's builder; a slot nobody registered is one
    clear error and leaves nothing in the cache."""
    from kbridge.engine.errors import KbridgeError
    from kbridge.engine.retrieve.mire import checkpoint

    assert twins.builder_for("mire") is checkpoint.build_tiny
    with pytest.raises(KbridgeError, match="no tiny twin builder is registered for model 'nope'"):
        zoo.ensure_tiny("nope", tmp_path)
    assert not zoo.tiny_dir("nope", tmp_path).exists()
