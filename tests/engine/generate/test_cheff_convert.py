"""convert-cheff: a tiny model in the published CompVis layout converts back to identical outputs."""
import json

import pytest
import torch

from kbridge.engine.generate import cheff_convert as C
from kbridge.engine.generate.cheff import load_components
from kbridge.engine.generate.cheff_tiny import tiny_parts
from kbridge.engine.twins import write_bert_tokenizer

# the published key structure (CompVis openaimodel UNet, x-transformers BERT embedder, KL autoencoder)
PUBLISHED = [
    "model.diffusion_model.input_blocks.0.0.weight", "model.diffusion_model.time_embed.0.weight",
    "model.diffusion_model.input_blocks.1.0.in_layers.0.weight", "model.diffusion_model.input_blocks.1.0.emb_layers.1.weight",
    "model.diffusion_model.input_blocks.1.1.proj_in.weight",
    "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
    "model.diffusion_model.input_blocks.3.0.op.weight", "model.diffusion_model.input_blocks.4.0.skip_connection.weight",
    "model.diffusion_model.middle_block.1.transformer_blocks.0.ff.net.0.proj.weight",
    "model.diffusion_model.middle_block.2.out_layers.3.weight",
    "model.diffusion_model.output_blocks.2.0.skip_connection.weight", "model.diffusion_model.output_blocks.2.1.conv.weight",
    "model.diffusion_model.output_blocks.5.2.conv.weight", "model.diffusion_model.out.2.weight",
    "cond_stage_model.transformer.token_emb.weight", "cond_stage_model.transformer.pos_emb.emb.weight",
    "cond_stage_model.transformer.attn_layers.layers.0.0.weight",
    "cond_stage_model.transformer.attn_layers.layers.0.1.to_q.weight",
    "cond_stage_model.transformer.attn_layers.layers.0.1.to_out.bias",
    "cond_stage_model.transformer.attn_layers.layers.1.1.net.0.0.weight",
    "cond_stage_model.transformer.attn_layers.layers.3.1.net.2.weight", "cond_stage_model.transformer.norm.weight",
]
PUBLISHED_AE = ["encoder.conv_in.weight", "encoder.down.0.block.0.norm1.weight", "encoder.down.1.block.0.nin_shortcut.weight",
                "encoder.down.0.downsample.conv.weight", "encoder.mid.attn_1.q.weight", "encoder.mid.block_2.conv2.weight",
                "quant_conv.weight", "post_quant_conv.weight", "decoder.up.2.block.0.conv1.weight",
                "decoder.up.2.upsample.conv.weight", "decoder.up.0.block.1.norm2.weight", "decoder.norm_out.weight"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("cheff-conv")
    tok = write_bert_tokenizer(d / "tok", max_length=150)
    # three levels, two blocks each, attention on the first two (as Cheff has it on its finer levels)
    parts = tiny_parts(tok, seed=3, blocks=(16, 32, 32), layers=2, attention=(True, True, False),
                       vae_blocks=(8, 16, 16), latent_size=8)
    return d, parts


def _outputs(parts):
    torch.manual_seed(0)
    ids = torch.randint(0, parts["bert"].config.vocab_size, (2, 150))
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        ctx = parts["bert"](ids)[0]
        eps = parts["unet"](x, torch.tensor([10, 500]), encoder_hidden_states=ctx).sample
        img = parts["vqvae"].decode(x).sample
        rec = parts["vqvae"].encode(torch.randn(1, 3, 32, 32)).latent_dist.mean
    return ctx, eps, img, rec


def test_published_layout_converts_to_identical_outputs(tiny, tmp_path):
    d, parts = tiny
    ldm, ae = C.to_compvis(parts)
    assert set(PUBLISHED) <= set(ldm) and set(PUBLISHED_AE) <= set(ae)
    assert ae["encoder.mid.attn_1.q.weight"].shape[-2:] == (1, 1)  # CompVis attention projections are 1×1 convs
    ae["loss.logvar"] = torch.zeros(())  # the training loss is in the published file and must be ignored
    torch.save({"state_dict": ldm, "global_step": 1}, d / "cheff_diff_t2i.pt")
    torch.save({"state_dict": ae}, d / "cheff_autoencoder.pt")
    out = C.convert_cheff(d / "cheff_diff_t2i.pt", d / "cheff_autoencoder.pt", tmp_path / "cheff", d / "tok",
                          image_size=32, unet_heads=4, bert_heads=4, groups=8)
    assert json.loads((out / "model_index.json").read_text())["_class_name"] == "LDMTextToImagePipeline"
    got = load_components(out)
    assert got["unet"].config.sample_size == 8 and got["tokenizer"].model_max_length == 150
    assert torch.equal(got["scheduler"].betas.float(), parts["scheduler"].betas.float())
    for a, b in zip(_outputs(parts), _outputs(got)):
        assert torch.allclose(a, b, atol=1e-6)


def test_autoencoder_inside_the_ldm_checkpoint_is_used_without_ae(tiny):
    _, parts = tiny
    ldm, _ = C.to_compvis(parts, with_vae_in_ldm=True)
    got = C.convert_state_dicts(ldm, {}, parts["tokenizer"], image_size=32, unet_heads=4, bert_heads=4, groups=8)
    assert torch.equal(got["vqvae"].decoder.conv_out.weight, parts["vqvae"].decoder.conv_out.weight)


def test_wrong_or_incomplete_checkpoints_fail_clearly(tiny):
    _, parts = tiny
    ldm, ae = C.to_compvis(parts)
    broken = dict(ldm)
    del broken["model.diffusion_model.output_blocks.2.1.conv.weight"]
    with pytest.raises(C.ConversionError, match="lacks 'output_blocks.2.1.conv.weight'"):
        C.convert_state_dicts(broken, ae, parts["tokenizer"], image_size=32, unet_heads=4, bert_heads=4, groups=8)
    extra = {**ae, "encoder.surprise.weight": torch.zeros(1)}
    with pytest.raises(C.ConversionError, match="not used"):
        C.convert_state_dicts(ldm, extra, parts["tokenizer"], image_size=32, unet_heads=4, bert_heads=4, groups=8)
    with pytest.raises(C.ConversionError, match="no autoencoder"):
        C.convert_state_dicts(ldm, {}, parts["tokenizer"], groups=8)


def test_cli_convert_cheff_reports_one_line_errors(tiny, tmp_path):
    from typer.testing import CliRunner

    from kbridge.cli.app import app

    d, _ = tiny
    args = ["models", "convert-cheff", "--ckpt", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "o")]
    r = CliRunner().invoke(app, args + ["--tokenizer", str(d / "tok")])
    assert r.exit_code == 2 and "error:" in r.output and "nope.pt does not exist" in r.output
    r = CliRunner().invoke(app, args + ["--tokenizer", str(tmp_path / "no-tokenizer")])
    assert r.exit_code == 2 and "cannot load a BERT tokenizer" in r.output
