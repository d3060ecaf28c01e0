"""Model export (ONNX, TensorRT) and the artifact cache: see the compiled-backends work."""
