"""Exported model graphs: I/O specs, ONNX export, TensorRT build plans, the artifact cache."""
