// Host-side entry of the CUDA MaxSim kernel (maxsim_cuda.cu), called by the nanobind binding in
// maxsim_cuda_bind.cpp so that nvcc never compiles nanobind's headers.
#pragma once
#include <cstdint>
#include <string>

namespace kbridge {

// Number of visible CUDA devices; 0 (and a reason in `why`) when there is none or no driver.
int cuda_devices(std::string &why);

// out[p] = MaxSim(Q_{pairs[p][0]}, X_{pairs[p][1]}) (forward; the symmetric form is the mean of
// this and the call with Q and X swapped). All pointers are host memory; float32 rows of width dim.
// Runs on CUDA device `device` (the caller's current device is restored) on a private stream.
// Returns an empty string on success, else the CUDA error.
std::string maxsim_pairs_cuda(const float *q, int64_t q_rows, const int64_t *q_off, int64_t nq, const float *x,
                              int64_t x_rows, const int64_t *x_off, int64_t nx, int64_t dim, const int64_t *pairs,
                              int64_t npairs, bool symmetric, float *out, int device);

}  // namespace kbridge
