"""Missing-aware downstream classifiers (DCP, REP) on a frozen CLIP ViT-B/16: model, published
checkpoint conversion, data, metrics, evaluation, a short training entry and ONNX export."""
