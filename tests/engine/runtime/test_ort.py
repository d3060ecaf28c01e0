"""onnxruntime's GPU providers: TensorRT execution-provider profiles from the export spec, the CUDA
provider's arena on the stage's GPU."""
from tests.helpers.cuda_fakes import example_spec


def test_trt_ep_profiles_and_cuda_arena(tmp_path):
    from kbridge.engine.runtime.ort import _providers

    trt, cuda, cpu = _providers("tensorrt", 2, True, tmp_path, example_spec(2))
    assert trt[1]["device_id"] == 2 and cuda[1]["device_id"] == 2 and cpu == "CPUExecutionProvider"
    assert trt[1]["trt_profile_min_shapes"] == "x:1x4x8x8,ids:1x77"
    assert trt[1]["trt_profile_opt_shapes"] == "x:2x4x8x8,ids:2x77"
    assert trt[1]["trt_profile_max_shapes"] == "x:2x4x8x8,ids:2x77"
    assert cuda[1]["arena_extend_strategy"] == "kSameAsRequested"
