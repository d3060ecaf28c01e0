// Batched late-interaction (MaxSim) scoring of ragged embedding sets, on the CPU.
//
// Sets are given concatenated: Q [NQ, D] holds every query set's rows, q_off [nq + 1] its row
// offsets (set i is rows q_off[i] .. q_off[i+1]); X / x_off the same for document sets.
//   maxsim(i, j)    = mean over q in Q_i of max over x in X_j of q·x
//   symmetric(i, j) = (maxsim(Q_i, X_j) + maxsim(X_j, Q_i)) / 2
// An empty set on either side scores 0.
//
// One idea: pairs are grouped by query set. A group's query set Q_i is packed once, transposed
// into panels of W rows ([D, W] each, contiguous), and the group's document rows (its document
// sets one after another, read in place) meet it in an outer-product micro-kernel: one panel
// vector (W query rows) times one broadcast value of each of RX document rows per step, RX vector
// accumulators, no horizontal sums, the shared dimension cut into L1-sized slices. The result is
// a small tile [document rows of the group, W-padded query rows]; each document set is a row
// range of it, and its forward (per query row: max over the set's rows) and backward (per
// document row: max over query rows) maxima are read off it. A tile covers at most ~CHUNK
// document rows, so the full [all queries x all documents] similarity tensor never exists.
// Groups run in parallel over OpenMP threads. float16 inputs are widened to float32 once, up
// front; all arithmetic is float32.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__F16C__)
#include <immintrin.h>
#endif

namespace nb = nanobind;

namespace {

#if defined(__AVX512F__)
constexpr int W = 16;  // lanes per vector
#elif defined(__AVX__)
constexpr int W = 8;
#else
constexpr int W = 4;
#endif
constexpr int PW = W;       // panel width: query rows per vector
#ifndef KB_RX
#define KB_RX 12
#endif
constexpr int RX = KB_RX;   // document rows per micro-kernel: RX accumulators hide FMA latency
constexpr int64_t KC = 128; // shared-dimension slice kept in L1
constexpr int64_t CHUNK = 1024;  // most document rows per task (keeps the tile in L2)
typedef float vfloat __attribute__((vector_size(W * sizeof(float))));

inline vfloat load(const float *p) {
    vfloat v;
    std::memcpy(&v, p, sizeof(v));
    return v;
}

inline void store(float *p, vfloat v) { std::memcpy(p, &v, sizeof(v)); }

// Pack query rows [q, q + n) transposed into panels of PW rows: row a lives in panel a / PW at
// lane a % PW, panels are [dim, PW] row-major. Returns the padded row count (zeros beyond n).
int64_t pack_panels(const float *q, int64_t n, int64_t dim, std::vector<float> &out) {
    int64_t padded = (n + PW - 1) / PW * PW;
    out.assign(size_t(padded * dim), 0.f);
    for (int64_t a = 0; a < n; ++a) {
        float *dst = out.data() + (a / PW) * dim * PW + a % PW;
        const float *src = q + a * dim;
        for (int64_t t = 0; t < dim; ++t) dst[t * PW] = src[t];
    }
    return padded;
}

// tile [rows, padded] = x rows (row pointers, each dim long) x query panels: tile[r][a] = x_r . q_a.
// Outer-product form: one panel vector (PW query rows) times one broadcast value of each of RX
// document rows per step, no horizontal sums. The shared dimension is cut into KC-long slices so
// that the panel slice stays in L1 across row blocks; partial sums go through the small tile.
// Blocks past the last row repeat it (same straight-line code) and are not stored.
void tile_product(const float *const *xrows, int64_t rows, const float *panels, int64_t padded, int64_t dim,
                  float *tile) {
    for (int64_t p = 0; p < padded / PW; ++p) {
        const float *qp = panels + p * dim * PW;
        for (int64_t t0 = 0; t0 < dim; t0 += KC) {
            const int64_t t1 = std::min(dim, t0 + KC);
            for (int64_t r0 = 0; r0 < rows; r0 += RX) {
                const float *xr[RX];
                for (int b = 0; b < RX; ++b) xr[b] = xrows[std::min(r0 + b, rows - 1)];
                float *out = tile + p * PW;
                vfloat acc[RX];
                for (int b = 0; b < RX; ++b)
                    acc[b] = (t0 == 0 || r0 + b >= rows) ? vfloat{} : load(out + (r0 + b) * padded);
                for (int64_t t = t0; t < t1; ++t) {
                    const vfloat qv = load(qp + t * PW);
                    for (int b = 0; b < RX; ++b) acc[b] += qv * xr[b][t];
                }
                for (int b = 0; b < RX && r0 + b < rows; ++b) store(out + (r0 + b) * padded, acc[b]);
            }
        }
    }
}

// Forward / backward MaxSim of one document set occupying tile rows [r0, r0 + m), n query columns.
void read_scores(const float *tile, int64_t n, int64_t padded, int64_t r0, int64_t m, bool backward, float &fwd,
                 float &bwd) {
    fwd = bwd = 0.f;
    if (n == 0 || m == 0) return;
    const float *blk = tile + r0 * padded;
    double s = 0.0;
    for (int64_t a = 0; a < n; ++a) {
        float best = blk[a];
        for (int64_t r = 1; r < m; ++r) best = std::max(best, blk[r * padded + a]);
        s += best;
    }
    fwd = float(s / double(n));
    if (!backward) return;
    s = 0.0;
    for (int64_t r = 0; r < m; ++r) {
        const float *row = blk + r * padded;
        float best = row[0];
        for (int64_t a = 1; a < n; ++a) best = std::max(best, row[a]);
        s += best;
    }
    bwd = float(s / double(m));
}

float half_to_float(uint16_t h) {
    uint32_t sign = uint32_t(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu, bits;
    if (exp == 0) {
        float f = std::ldexp(float(mant), -24);  // zero or subnormal
        std::memcpy(&bits, &f, 4);
        bits |= sign;
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (mant << 13);
    } else {
        bits = sign | ((exp + 112u) << 23) | (mant << 13);
    }
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}

using Off = nb::ndarray<const int64_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using Pairs = nb::ndarray<const int64_t, nb::ndim<2>, nb::c_contig, nb::device::cpu>;
template <class T>
using Mat = nb::ndarray<const T, nb::ndim<2>, nb::c_contig, nb::device::cpu>;
using Out = nb::ndarray<nb::numpy, float>;

void check_offsets(const Off &off, int64_t rows, const char *name) {
    if (off.shape(0) < 1) throw std::invalid_argument(std::string(name) + " offsets must have at least one entry");
    const int64_t *o = off.data();
    if (o[0] != 0) throw std::invalid_argument(std::string(name) + " offsets must start at 0");
    for (size_t i = 1; i < off.shape(0); ++i)
        if (o[i] < o[i - 1]) throw std::invalid_argument(std::string(name) + " offsets must be non-decreasing");
    if (o[off.shape(0) - 1] != rows)
        throw std::invalid_argument(std::string(name) + " offsets must end at the number of rows (" +
                                    std::to_string(rows) + ")");
}

// Widen float16 (bit patterns) to float32; float32 passes through without a copy.
const float *as_f32(const Mat<float> &a, std::vector<float> &) { return a.data(); }
const float *as_f32(const Mat<uint16_t> &a, std::vector<float> &buf) {
    size_t n = a.shape(0) * a.shape(1);
    buf.resize(n);
    const uint16_t *src = a.data();
    const int64_t blocks = (int64_t(n) + 4095) / 4096;
#pragma omp parallel for schedule(static) if (blocks > 16)
    for (int64_t b = 0; b < blocks; ++b) {
        int64_t i = b * 4096, end = std::min<int64_t>(int64_t(n), i + 4096);
#if defined(__F16C__)
        for (; i + 8 <= end; i += 8)  // hardware conversion, 8 lanes at a time
            _mm256_storeu_ps(buf.data() + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i *>(src + i))));
#endif
        for (; i < end; ++i) buf[i] = half_to_float(src[i]);
    }
    return buf.data();
}

// A float32 result owned by numpy: [rows] when cols == 0, else [rows, cols].
Out make_out(size_t rows, size_t cols, float *&data) {
    data = new float[std::max<size_t>(cols ? rows * cols : rows, 1)];
    nb::capsule owner(data, [](void *p) noexcept { delete[] static_cast<float *>(p); });
    if (cols == 0) return Out(data, {rows}, owner);
    return Out(data, {rows, cols}, owner);
}

// Scores every (query set, document set) pair p = (pq[p], px[p]); out[p] is the forward or the
// symmetric score. pq / px are strided views (pairs array columns, or an implicit grid).
// out[p] = forward or symmetric MaxSim of pairs[p] = (query set, document set), p < npairs.
// Tasks: pairs sorted by query set, cut into runs of one query set and at most CHUNK columns.
template <class T>
void run_pairs(const Mat<T> &q, const Off &q_off, const Mat<T> &x, const Off &x_off, const int64_t *pairs,
               int64_t npairs, bool symmetric, float *out) {
    int64_t dim = q.shape(1);
    std::vector<float> qbuf, xbuf;
    nb::gil_scoped_release release;
    const float *qf = as_f32(q, qbuf), *xf = as_f32(x, xbuf);
    const int64_t *qo = q_off.data(), *xo = x_off.data();
    std::vector<int64_t> order(npairs);
    for (int64_t p = 0; p < npairs; ++p) order[p] = p;
    std::stable_sort(order.begin(), order.end(),
                     [pairs](int64_t a, int64_t b) { return pairs[2 * a] < pairs[2 * b]; });
    std::vector<int64_t> starts;  // task boundaries in `order`
    for (int64_t k = 0, cols = 0; k < npairs; ++k) {
        int64_t i = pairs[2 * order[k]], j = pairs[2 * order[k] + 1], m = xo[j + 1] - xo[j];
        if (k == 0 || i != pairs[2 * order[k - 1]] || cols + m > CHUNK) {
            starts.push_back(k);
            cols = 0;
        }
        cols += m;
    }
    starts.push_back(npairs);
    int64_t ntasks = int64_t(starts.size()) - 1;
#pragma omp parallel
    {
        std::vector<float> panels, tile;
        std::vector<const float *> xrows;
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < ntasks; ++t) {
            int64_t k0 = starts[t], k1 = starts[t + 1], i = pairs[2 * order[k0]];
            int64_t n = qo[i + 1] - qo[i];
            if (n == 0) {
                for (int64_t k = k0; k < k1; ++k) out[order[k]] = 0.f;
                continue;
            }
            xrows.clear();
            for (int64_t k = k0; k < k1; ++k) {
                int64_t j = pairs[2 * order[k] + 1];
                for (int64_t r = xo[j]; r < xo[j + 1]; ++r) xrows.push_back(xf + r * dim);
            }
            int64_t padded = pack_panels(qf + qo[i] * dim, n, dim, panels);
            tile.resize(size_t(std::max<int64_t>(int64_t(xrows.size()) * padded, 1)));
            if (!xrows.empty())
                tile_product(xrows.data(), int64_t(xrows.size()), panels.data(), padded, dim, tile.data());
            int64_t r0 = 0;
            for (int64_t k = k0; k < k1; ++k) {
                int64_t j = pairs[2 * order[k] + 1], m = xo[j + 1] - xo[j];
                float f, b;
                read_scores(tile.data(), n, padded, r0, m, symmetric, f, b);
                out[order[k]] = symmetric ? 0.5f * (f + b) : f;
                r0 += m;
            }
        }
    }
}

template <class T>
void check_inputs(const Mat<T> &q, const Off &q_off, const Mat<T> &x, const Off &x_off) {
    if (q.shape(1) != x.shape(1))
        throw std::invalid_argument("query and document embeddings differ in width (" + std::to_string(q.shape(1)) +
                                    " vs " + std::to_string(x.shape(1)) + ")");
    check_offsets(q_off, q.shape(0), "query");
    check_offsets(x_off, x.shape(0), "document");
}

template <class T>
Out maxsim_pairs(Mat<T> q, Off q_off, Mat<T> x, Off x_off, Pairs pairs, bool symmetric) {
    check_inputs(q, q_off, x, x_off);
    if (pairs.shape(1) != 2) throw std::invalid_argument("pairs must have shape [P, 2]");
    int64_t np_ = pairs.shape(0), nq = q_off.shape(0) - 1, nx = x_off.shape(0) - 1;
    const int64_t *pp = pairs.data();
    for (int64_t p = 0; p < np_; ++p)
        if (pp[2 * p] < 0 || pp[2 * p] >= nq || pp[2 * p + 1] < 0 || pp[2 * p + 1] >= nx)
            throw std::invalid_argument("pair " + std::to_string(p) + " refers to a set that does not exist");
    float *out;
    Out res = make_out(np_, 0, out);
    run_pairs(q, q_off, x, x_off, pp, np_, symmetric, out);
    return res;
}

template <class T>
Out maxsim_all(Mat<T> q, Off q_off, Mat<T> x, Off x_off, bool symmetric) {
    check_inputs(q, q_off, x, x_off);
    int64_t nq = q_off.shape(0) - 1, nx = x_off.shape(0) - 1;
    float *out;
    Out res = make_out(nq, nx, out);
    std::vector<int64_t> grid(size_t(2 * nq * nx));
    for (int64_t p = 0; p < nq * nx; ++p) {
        grid[2 * p] = p / nx;
        grid[2 * p + 1] = p % nx;
    }
    run_pairs(q, q_off, x, x_off, grid.data(), nq * nx, symmetric, out);
    return res;
}

int threads() {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

}  // namespace

NB_MODULE(_kernels, m) {
    m.doc() = "kbridge native kernels (CPU): batched MaxSim over ragged embedding sets";
    const char *pairs_doc =
        "maxsim_pairs_<dtype>(q [NQ, D], q_off [nq+1] int64, x [NX, D], x_off [nx+1] int64, pairs [P, 2] int64,"
        " symmetric) -> float32 [P]";
    const char *all_doc =
        "maxsim_all_<dtype>(q, q_off, x, x_off, symmetric) -> float32 [nq, nx] (every query set vs every doc set)";
    m.def("maxsim_pairs_f32", &maxsim_pairs<float>, nb::arg("q"), nb::arg("q_off"), nb::arg("x"), nb::arg("x_off"),
          nb::arg("pairs"), nb::arg("symmetric") = false, pairs_doc);
    m.def("maxsim_pairs_f16", &maxsim_pairs<uint16_t>, nb::arg("q"), nb::arg("q_off"), nb::arg("x"),
          nb::arg("x_off"), nb::arg("pairs"), nb::arg("symmetric") = false,
          "float16 inputs passed as their uint16 bit patterns; otherwise as maxsim_pairs_f32");
    m.def("maxsim_all_f32", &maxsim_all<float>, nb::arg("q"), nb::arg("q_off"), nb::arg("x"), nb::arg("x_off"),
          nb::arg("symmetric") = false, all_doc);
    m.def("maxsim_all_f16", &maxsim_all<uint16_t>, nb::arg("q"), nb::arg("q_off"), nb::arg("x"), nb::arg("x_off"),
          nb::arg("symmetric") = false, "float16 (as uint16 bit patterns) variant of maxsim_all_f32");
    m.def("threads", &threads, "OpenMP threads the kernels use (1 without OpenMP)");
    m.attr("simd_width") = W;
}
