// Batched late-interaction (MaxSim) scoring of ragged embedding sets, on the CPU.
//
// Sets are given concatenated: Q [NQ, D] holds every query set's rows, q_off [nq + 1] its row
// offsets (set i is rows q_off[i] .. q_off[i+1]); X / x_off the same for document sets.
//   maxsim(i, j)    = mean over q in Q_i of max over x in X_j of q·x
//   symmetric(i, j) = (maxsim(Q_i, X_j) + maxsim(X_j, Q_i)) / 2
// An empty set on either side scores 0.
//
// One idea: a pair's similarity tile S = Q_i X_j^T is never stored. It is produced in register
// blocks of RQ query rows × RX document rows (RQ·RX vector accumulators over the shared dimension,
// one horizontal sum per dot product), and each block immediately updates the running row maxima
// (and column maxima for the symmetric form). Blocks at a set's edge repeat the last row's pointer
// instead of branching, so every block runs the same straight-line code. Pairs are independent and
// are spread over OpenMP threads. float16 inputs are widened to float32 once, up front; all
// arithmetic is float32.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace nb = nanobind;

namespace {

#if defined(__AVX512F__)
constexpr int W = 16;  // lanes per vector
constexpr int RQ = 4, RX = 4;
#elif defined(__AVX__)
constexpr int W = 8;
constexpr int RQ = 4, RX = 3;  // 12 accumulators + 7 loads fit in 16 ymm registers
#else
constexpr int W = 4;
constexpr int RQ = 2, RX = 2;
#endif
typedef float vfloat __attribute__((vector_size(W * sizeof(float))));

inline vfloat load(const float *p) {
    vfloat v;
    std::memcpy(&v, p, sizeof(v));  // unaligned load
    return v;
}

inline float hsum(vfloat v) {
    float s = 0.f;
    for (int l = 0; l < W; ++l) s += v[l];
    return s;
}

// dots[a][b] = q[a] · x[b] over dim floats, for RQ query rows and RX document rows.
inline void block_dots(const float *const *q, const float *const *x, int64_t dim, float dots[RQ][RX]) {
    vfloat acc[RQ][RX];
    for (int a = 0; a < RQ; ++a)
        for (int b = 0; b < RX; ++b) acc[a][b] = vfloat{};
    int64_t k = 0;
    for (; k + W <= dim; k += W) {
        vfloat xv[RX];
        for (int b = 0; b < RX; ++b) xv[b] = load(x[b] + k);
        for (int a = 0; a < RQ; ++a) {
            vfloat qv = load(q[a] + k);
            for (int b = 0; b < RX; ++b) acc[a][b] += qv * xv[b];
        }
    }
    for (int a = 0; a < RQ; ++a)
        for (int b = 0; b < RX; ++b) {
            float s = hsum(acc[a][b]);
            for (int64_t t = k; t < dim; ++t) s += q[a][t] * x[b][t];
            dots[a][b] = s;
        }
}

// One pair: Q rows [q, q + n), X rows [x, x + m). Returns (forward, backward) MaxSim.
// rowmax / colmax are scratch buffers of at least n and m floats.
void pair_scores(const float *q, int64_t n, const float *x, int64_t m, int64_t dim, bool backward,
                 float *rowmax, float *colmax, float &fwd, float &bwd) {
    fwd = bwd = 0.f;
    if (n == 0 || m == 0) return;
    const float ninf = -std::numeric_limits<float>::infinity();
    std::fill(rowmax, rowmax + n, ninf);
    if (backward) std::fill(colmax, colmax + m, ninf);
    const float *qp[RQ];
    const float *xp[RX];
    float dots[RQ][RX];
    for (int64_t i0 = 0; i0 < n; i0 += RQ) {
        for (int a = 0; a < RQ; ++a) qp[a] = q + std::min(i0 + a, n - 1) * dim;
        for (int64_t j0 = 0; j0 < m; j0 += RX) {
            for (int b = 0; b < RX; ++b) xp[b] = x + std::min(j0 + b, m - 1) * dim;
            block_dots(qp, xp, dim, dots);
            // rows / columns past the edge repeat the last one: their maxima are the same values
            for (int a = 0; a < RQ && i0 + a < n; ++a)
                for (int b = 0; b < RX; ++b) rowmax[i0 + a] = std::max(rowmax[i0 + a], dots[a][b]);
            if (backward)
                for (int b = 0; b < RX && j0 + b < m; ++b)
                    for (int a = 0; a < RQ; ++a) colmax[j0 + b] = std::max(colmax[j0 + b], dots[a][b]);
        }
    }
    double s = 0.0;
    for (int64_t i = 0; i < n; ++i) s += rowmax[i];
    fwd = float(s / double(n));
    if (backward) {
        s = 0.0;
        for (int64_t j = 0; j < m; ++j) s += colmax[j];
        bwd = float(s / double(m));
    }
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

int64_t max_len(const Off &off) {
    int64_t best = 0;
    for (size_t i = 1; i < off.shape(0); ++i) best = std::max(best, off.data()[i] - off.data()[i - 1]);
    return best;
}

// Widen float16 (bit patterns) to float32; float32 passes through without a copy.
const float *as_f32(const Mat<float> &a, std::vector<float> &) { return a.data(); }
const float *as_f32(const Mat<uint16_t> &a, std::vector<float> &buf) {
    size_t n = a.shape(0) * a.shape(1);
    buf.resize(n);
    const uint16_t *src = a.data();
#pragma omp parallel for schedule(static) if (n > (1 << 16))
    for (int64_t i = 0; i < int64_t(n); ++i) buf[i] = half_to_float(src[i]);
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
template <class T, class PairOf>
void run_pairs(const Mat<T> &q, const Off &q_off, const Mat<T> &x, const Off &x_off, int64_t npairs,
               PairOf pair_of, bool symmetric, float *out) {
    int64_t dim = q.shape(1);
    std::vector<float> qbuf, xbuf;
    const float *qf, *xf;
    {
        nb::gil_scoped_release release;
        qf = as_f32(q, qbuf);
        xf = as_f32(x, xbuf);
        const int64_t *qo = q_off.data(), *xo = x_off.data();
        int64_t nmax = std::max<int64_t>(max_len(q_off), 1), mmax = std::max<int64_t>(max_len(x_off), 1);
#pragma omp parallel
        {
            std::vector<float> rowmax(nmax), colmax(mmax);
#pragma omp for schedule(dynamic, 8)
            for (int64_t p = 0; p < npairs; ++p) {
                int64_t i, j;
                pair_of(p, i, j);
                float f, b;
                pair_scores(qf + qo[i] * dim, qo[i + 1] - qo[i], xf + xo[j] * dim, xo[j + 1] - xo[j], dim,
                            symmetric, rowmax.data(), colmax.data(), f, b);
                out[p] = symmetric ? 0.5f * (f + b) : f;
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
    run_pairs(q, q_off, x, x_off, np_, [pp](int64_t p, int64_t &i, int64_t &j) { i = pp[2 * p]; j = pp[2 * p + 1]; },
              symmetric, out);
    return res;
}

template <class T>
Out maxsim_all(Mat<T> q, Off q_off, Mat<T> x, Off x_off, bool symmetric) {
    check_inputs(q, q_off, x, x_off);
    int64_t nq = q_off.shape(0) - 1, nx = x_off.shape(0) - 1;
    float *out;
    Out res = make_out(nq, nx, out);
    run_pairs(q, q_off, x, x_off, nq * nx, [nx](int64_t p, int64_t &i, int64_t &j) { i = p / nx; j = p % nx; },
              symmetric, out);
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
