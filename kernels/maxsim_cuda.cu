// Batched MaxSim over ragged embedding sets on a CUDA GPU (see maxsim.cpp for the definition).
//
// One idea: one thread block per (query set, document set) pair; each warp owns query rows
// (warp, warp + WARPS, ...), computes each row's dot products with every document row by a
// lane-strided loop over the embedding width plus a shuffle reduction, and keeps the running
// maximum in a register; the block then averages the row maxima. The similarity tile is never
// stored. The symmetric form runs the same kernel with the roles swapped.
#include <cuda_runtime.h>

#include <cmath>
#include <string>

#include "maxsim_cuda.h"

namespace {

constexpr int WARPS = 4;

__global__ void maxsim_kernel(const float *q, const int64_t *q_off, const float *x, const int64_t *x_off, int dim,
                              const int64_t *pairs, int swap, float *out) {
    const int64_t p = blockIdx.x;
    const int64_t i = pairs[2 * p + swap], j = pairs[2 * p + 1 - swap];
    const int64_t q0 = q_off[i], n = q_off[i + 1] - q0, x0 = x_off[j], m = x_off[j + 1] - x0;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    __shared__ float partial[WARPS];
    float sum = 0.f;  // this warp's sum of row maxima
    for (int64_t r = warp; r < n && m > 0; r += WARPS) {
        const float *qr = q + (q0 + r) * dim;
        float best = -INFINITY;
        for (int64_t c = 0; c < m; ++c) {
            const float *xc = x + (x0 + c) * dim;
            float s = 0.f;
            for (int k = lane; k < dim; k += 32) s += qr[k] * xc[k];
            for (int o = 16; o > 0; o /= 2) s += __shfl_xor_sync(0xffffffffu, s, o);
            best = fmaxf(best, s);
        }
        sum += best;
    }
    if (lane == 0) partial[warp] = sum;
    __syncthreads();
    if (threadIdx.x == 0) {
        float t = 0.f;
        for (int w = 0; w < WARPS; ++w) t += partial[w];
        out[p] = (n > 0 && m > 0) ? t / float(n) : 0.f;
    }
}

// Stream-ordered buffers on one device: cudaMallocAsync / cudaFreeAsync draw on the device's default
// memory pool (no device-wide synchronisation as cudaMalloc / cudaFree would), on a private
// non-blocking stream, so a call never waits for (or stalls) other streams on the GPU. The default
// pool's release threshold is 0 (CUDA runtime API, cudaMemPoolAttrReleaseThreshold): its memory would
// go back to the driver at every synchronisation, so keep_pool raises it to 256 MiB (never lowers it:
// another user of the pool may keep more) and the buffers really are cached across calls.
constexpr uint64_t POOL_KEEP = 256ull << 20;

void keep_pool(int device) {
    cudaMemPool_t pool;
    if (cudaDeviceGetDefaultMemPool(&pool, device) != cudaSuccess) return;
    uint64_t cur = 0;
    if (cudaMemPoolGetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &cur) != cudaSuccess) return;
    if (cur < POOL_KEEP) {
        uint64_t want = POOL_KEEP;
        cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &want);
    }
}

struct Call {
    int prev_device = -1;
    cudaStream_t stream = nullptr;
    void *ptr[7] = {};
    ~Call() {
        if (stream) {
            for (void *p : ptr)
                if (p) cudaFreeAsync(p, stream);
            cudaStreamSynchronize(stream);
            cudaStreamDestroy(stream);
        }
        if (prev_device >= 0) cudaSetDevice(prev_device);
    }
};

}  // namespace

namespace kbridge {

int cuda_devices(std::string &why) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        why = cudaGetErrorString(e);
        return 0;
    }
    if (n == 0) why = "no CUDA device is visible";
    return n;
}

std::string maxsim_pairs_cuda(const float *q, int64_t q_rows, const int64_t *q_off, int64_t nq, const float *x,
                              int64_t x_rows, const int64_t *x_off, int64_t nx, int64_t dim, const int64_t *pairs,
                              int64_t npairs, bool symmetric, float *out, int device) {
    if (npairs == 0) return "";
    Call b;
    cudaError_t e = cudaGetDevice(&b.prev_device);
    if (e == cudaSuccess) e = cudaSetDevice(device);
    if (e == cudaSuccess) keep_pool(device);
    if (e == cudaSuccess) e = cudaStreamCreateWithFlags(&b.stream, cudaStreamNonBlocking);
    if (e != cudaSuccess) return cudaGetErrorString(e);
    const size_t sizes[7] = {size_t(q_rows * dim) * 4, size_t(nq + 1) * 8, size_t(x_rows * dim) * 4,
                             size_t(nx + 1) * 8,       size_t(npairs) * 16, size_t(npairs) * 4,
                             size_t(npairs) * 4};
    const void *src[5] = {q, q_off, x, x_off, pairs};
    for (int k = 0; k < 7; ++k) {
        e = cudaMallocAsync(&b.ptr[k], sizes[k] ? sizes[k] : 4, b.stream);
        if (e != cudaSuccess) return cudaGetErrorString(e);
        if (k < 5 && sizes[k]) {
            e = cudaMemcpyAsync(b.ptr[k], src[k], sizes[k], cudaMemcpyHostToDevice, b.stream);
            if (e != cudaSuccess) return cudaGetErrorString(e);
        }
    }
    auto *dq = static_cast<float *>(b.ptr[0]), *dx = static_cast<float *>(b.ptr[2]);
    auto *dqo = static_cast<int64_t *>(b.ptr[1]), *dxo = static_cast<int64_t *>(b.ptr[3]);
    auto *dp = static_cast<int64_t *>(b.ptr[4]);
    auto *fwd = static_cast<float *>(b.ptr[5]), *bwd = static_cast<float *>(b.ptr[6]);
    maxsim_kernel<<<unsigned(npairs), WARPS * 32, 0, b.stream>>>(dq, dqo, dx, dxo, int(dim), dp, 0, fwd);
    if (symmetric) maxsim_kernel<<<unsigned(npairs), WARPS * 32, 0, b.stream>>>(dx, dxo, dq, dqo, int(dim), dp, 1, bwd);
    e = cudaGetLastError();
    if (e != cudaSuccess) return cudaGetErrorString(e);
    float *tmp = symmetric ? new float[npairs] : nullptr;
    e = cudaMemcpyAsync(out, fwd, size_t(npairs) * 4, cudaMemcpyDeviceToHost, b.stream);
    if (e == cudaSuccess && symmetric) e = cudaMemcpyAsync(tmp, bwd, size_t(npairs) * 4, cudaMemcpyDeviceToHost, b.stream);
    if (e == cudaSuccess) e = cudaStreamSynchronize(b.stream);  // this call's stream only
    if (e == cudaSuccess && symmetric)
        for (int64_t p = 0; p < npairs; ++p) out[p] = 0.5f * (out[p] + tmp[p]);
    delete[] tmp;
    return e == cudaSuccess ? "" : cudaGetErrorString(e);
}

}  // namespace kbridge
