// nanobind module `_kernels_cuda`: the CUDA MaxSim over host float32 arrays (inputs are copied to
// the device, scores copied back). Built only when CMake finds a CUDA toolkit (KBRIDGE_CUDA).
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>

#include <stdexcept>
#include <string>

#include "maxsim_cuda.h"

namespace nb = nanobind;
using Mat = nb::ndarray<const float, nb::ndim<2>, nb::c_contig, nb::device::cpu>;
using Off = nb::ndarray<const int64_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using Pairs = nb::ndarray<const int64_t, nb::ndim<2>, nb::c_contig, nb::device::cpu>;
using Out = nb::ndarray<nb::numpy, float, nb::ndim<1>>;

static Out maxsim_pairs(Mat q, Off q_off, Mat x, Off x_off, Pairs pairs, bool symmetric, int device) {
    // shapes and offsets are validated by the Python wrapper (kernels/maxsim.py) before the call
    if (q.shape(1) != x.shape(1) || pairs.shape(1) != 2) throw std::invalid_argument("bad shapes for maxsim_pairs");
    size_t np_ = pairs.shape(0);
    float *out = new float[np_ ? np_ : 1];
    nb::capsule owner(out, [](void *p) noexcept { delete[] static_cast<float *>(p); });
    std::string err;
    {
        nb::gil_scoped_release release;
        err = kbridge::maxsim_pairs_cuda(q.data(), q.shape(0), q_off.data(), int64_t(q_off.shape(0)) - 1, x.data(),
                                         x.shape(0), x_off.data(), int64_t(x_off.shape(0)) - 1, q.shape(1),
                                         pairs.data(), int64_t(np_), symmetric, out, device);
    }
    if (!err.empty()) throw std::runtime_error("CUDA MaxSim failed: " + err);
    return Out(out, {np_}, owner);
}

static nb::tuple devices() {
    std::string why;
    int n = kbridge::cuda_devices(why);
    return nb::make_tuple(n, why);
}

NB_MODULE(_kernels_cuda, m) {
    m.doc() = "kbridge native kernels (CUDA): batched MaxSim over ragged embedding sets";
    m.def("maxsim_pairs_f32", &maxsim_pairs, nb::arg("q"), nb::arg("q_off"), nb::arg("x"), nb::arg("x_off"),
          nb::arg("pairs"), nb::arg("symmetric") = false, nb::arg("device") = 0);
    m.def("devices", &devices, "(number of CUDA devices, reason when 0)");
}
