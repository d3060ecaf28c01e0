"""The full-size twins (random weights at the published architectures) against the published
parameter counts."""


def test_full_size_twins_match_published_parameter_counts():
    from kbridge.engine import fullsize as F

    counts = F.param_counts(F.FULL_SIZE, "meta")
    for name, (published, tol, source) in F.PUBLISHED.items():
        assert abs(counts[name] - published) <= tol * published, (name, counts[name], source)
    assert counts["sdxl.vae"] == 83_653_863  # the SDXL VAE's published count
    # Cheff has no published total: its text embedder is checked against x-transformers' closed form
    # for its published config (1280 wide, 32 layers, 8 heads × 64, ffn 4×, vocab 30522, 77 positions)
    d, inner, ffn, v = 1280, 512, 5120, 30522
    layer = 3 * inner * d + (inner * d + d) + 2 * d + (ffn * d + ffn) + (d * ffn + d) + 2 * d
    bert = v * d + 77 * d + 32 * layer + 2 * d + (v * d + v)
    cheff = F.build("cheff", "meta").module
    assert sum(p.numel() for p in cheff["bert"].parameters()) == bert
    assert counts["cheff"] == sum(p.numel() for p in cheff.parameters())
