"""The ONNX export's example inputs follow the module's device and dtype (no CPU tensor meets a GPU
module, no second copy of fp16 weights)."""
import torch


def test_export_examples_follow_the_module_device_and_dtype():
    from kbridge.export.onnx import trace_inputs
    from kbridge.export.specs import Axis, ExportSpec, TensorSpec

    spec = ExportSpec("m", (TensorSpec("x", ("batch", 4)), TensorSpec("ids", ("batch", 3), "int64", 9)),
                      (TensorSpec("y", ("batch", 4)),), (Axis("batch", 1, 2, 8, 2),))
    gpu_like = torch.nn.Linear(4, 4, device="meta", dtype=torch.float16)  # a "CUDA fp16" pipeline module
    m, ex = trace_inputs(spec, gpu_like, fp16=True)
    assert m is gpu_like  # already the graph's dtype: no second copy of the weights
    assert ex["x"].device.type == "meta" and ex["x"].dtype == torch.float16
    assert ex["ids"].device.type == "meta" and ex["ids"].dtype == torch.int64
    m, ex = trace_inputs(spec, gpu_like, fp16=False)  # an fp32 graph of an fp16 module: a cast copy
    assert m is not gpu_like and next(m.parameters()).dtype == torch.float32 and gpu_like.weight.dtype == torch.float16
    assert ex["x"].dtype == torch.float32 and ex["x"].device.type == "meta"
