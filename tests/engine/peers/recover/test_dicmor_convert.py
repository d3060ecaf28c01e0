"""Checkpoint conversion against the reference key lists, and the round trip."""
import pytest
import torch

from tests.engine.peers.recover.dicmor_helpers import read_tsv, reference_state
from kbridge.engine.peers.recover.convert import (DEAD, ConversionError, convert, infer_config, load_dir,
                                            reference_layout, split_reference, to_reference)
from kbridge.engine.peers.recover.model import MOSEI, MOSI, TINY, DiCMoR


@pytest.mark.parametrize("cfg, name", [(MOSI, "mosi"), (MOSEI, "mosei")])
def test_reference_layout_is_the_key_list(cfg, name):
    """Names, shapes and dtypes of the reference state dict (keys/dicmor_*.tsv, 2073 / 2289)."""
    tsv = read_tsv(name)
    ours = {k: (s, str(dt).replace("torch.", "")) for k, (s, dt) in reference_layout(cfg).items()}
    assert len(tsv) == {"mosi": 2073, "mosei": 2289}[name]
    assert ours == tsv


@pytest.mark.parametrize("cfg, name", [(MOSI, "mosi"), (MOSEI, "mosei")])
def test_full_size_checkpoint_on_meta_uses_every_key(cfg, name):
    """A state dict with exactly the TSV names at full shape (meta tensors): the architecture is
    read back, and every key is either loaded or a documented dead one."""
    sd = {k: torch.empty(s, dtype=getattr(torch, dt), device="meta") for k, (s, dt) in read_tsv(name).items()}
    assert infer_config(sd) == cfg
    ours, bert, dead = split_reference(sd, cfg)
    assert not bert and len(ours) + len(dead) == len(sd)
    assert all(DEAD.search(k) for k in dead)
    with torch.device("meta"):
        model = DiCMoR(cfg)
    assert set(model.state_dict()) == set(ours)
    dead_kinds = {k.split(".")[-2] if "actnorm" in k or "invconv" in k else k.split(".")[0] for k in dead}
    assert {"actnorm", "invconv", "weight_l", "weight_a", "weight_v"} <= dead_kinds


def _tiny_bert_state(tmp_path):
    from kbridge.engine.peers.recover.text import tiny_bert

    torch.manual_seed(0)
    return {"text_model.model." + k: v + 0.5 for k, v in tiny_bert(tmp_path / "src-bert", hidden=TINY.dims[0]).state_dict().items()}


def test_round_trip_tiny_checkpoint(tmp_path):
    ref = reference_state(TINY, seed=4)
    bert = _tiny_bert_state(tmp_path)
    torch.save(ref | bert, tmp_path / "dicmor-tiny.pth")
    out = convert(tmp_path / "dicmor-tiny.pth", tmp_path / "out", bert="tiny", heads=TINY.heads)
    model, text = load_dir(out)
    assert text == "bert" and model.cfg == TINY
    back = to_reference(model)
    live = {k: v for k, v in ref.items() if not DEAD.search(k)}
    assert set(back) == set(live)
    assert all(torch.equal(back[k], live[k]) for k in live)
    assert set((out / "dropped.txt").read_text().split()) == set(ref) - set(live)
    from kbridge.engine.peers.recover.text import load_bert
    got = load_bert(out / "bert").state_dict()
    assert all(torch.equal(got[k[len("text_model.model."):]], v) for k, v in bert.items()
               if not k.endswith("position_ids"))


def test_mmsa_prefix_and_features_mode(tmp_path):
    ref = reference_state(TINY, seed=5)
    torch.save({"Model." + k: v for k, v in ref.items()}, tmp_path / "pretrained.pth")
    model, text = load_dir(convert(tmp_path / "pretrained.pth", tmp_path / "o", heads=TINY.heads))
    assert text == "features" and torch.equal(model.proj_l.weight, ref["proj_l.weight"])


@pytest.mark.parametrize("edit, message", [
    (lambda sd: sd.update({"extra.weight": torch.zeros(1)}), "unexpected checkpoint key 'extra.weight'"),
    (lambda sd: sd.pop("cat_v.bias"), "lacks 1 DiCMoR keys"),
    (lambda sd: sd.update({"proj2.bias": torch.zeros(3)}), "'proj2.bias' has shape (3,)"),
])
def test_bad_checkpoints_fail_by_name(tmp_path, edit, message):
    sd = reference_state(TINY)
    edit(sd)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(ConversionError, match=message.replace("(", r"\(").replace(")", r"\)")):
        convert(tmp_path / "bad.pth", tmp_path / "o", heads=TINY.heads)


class Payload:
    pass


def test_pickled_objects_need_trust(tmp_path):
    sd = reference_state(TINY)
    torch.save({"state_dict": sd, "extra": Payload()}, tmp_path / "obj.pth")
    with pytest.raises(ConversionError, match="--trust-checkpoint"):
        convert(tmp_path / "obj.pth", tmp_path / "o", heads=TINY.heads)
    assert load_dir(convert(tmp_path / "obj.pth", tmp_path / "o", heads=TINY.heads, trust=True))[0].cfg == TINY


def test_bert_weights_need_a_bert_config(tmp_path):
    torch.save(reference_state(TINY) | _tiny_bert_state(tmp_path), tmp_path / "c.pth")
    with pytest.raises(ConversionError, match="--bert DIR"):
        convert(tmp_path / "c.pth", tmp_path / "o", heads=TINY.heads)


def test_bert_from_a_local_directory(tmp_path):
    """--bert DIR: its config and tokenizer; the checkpoint's BERT weights when it has them, the
    directory's own weights otherwise."""
    from kbridge.engine.peers.recover.text import load_bert, tiny_bert

    local = tmp_path / "bert-base-uncased"
    own = tiny_bert(local, hidden=TINY.dims[0], seed=3).state_dict()
    ckpt_bert = _tiny_bert_state(tmp_path)
    torch.save(reference_state(TINY) | ckpt_bert, tmp_path / "with.pth")
    out = convert(tmp_path / "with.pth", tmp_path / "a", bert=local, heads=TINY.heads)
    got = load_bert(out / "bert").state_dict()
    assert (out / "bert" / "vocab.txt").read_text() == (local / "vocab.txt").read_text()
    k = "embeddings.word_embeddings.weight"
    assert torch.equal(got[k], ckpt_bert["text_model.model." + k])
    torch.save(reference_state(TINY), tmp_path / "without.pth")
    got = load_bert(convert(tmp_path / "without.pth", tmp_path / "b", bert=local, heads=TINY.heads) / "bert").state_dict()
    assert torch.equal(got[k], own[k])
