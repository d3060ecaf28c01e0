"""MaxSim kernel parity with the numpy reference over shapes, dtypes and ragged lengths."""
import numpy as np
import pytest

from kbridge.kernels.maxsim import (KernelUnavailable, cpu_available, cuda_status, maxsim_all, maxsim_pairs,
                                    maxsim_reference, pack)

needs_cpu_kernel = pytest.mark.skipif(not cpu_available(), reason="kbridge._kernels is not built")


def ragged(rng, lengths, dim, dtype, unit=True):
    sets = []
    for n in lengths:
        a = rng.standard_normal((n, dim)).astype(np.float32)
        if unit and n:
            a /= np.linalg.norm(a, axis=1, keepdims=True)
        sets.append(a.astype(dtype))
    return pack(sets, dim, dtype)


def brute(qs, xs, i, j, symmetric):
    """Definition straight from the docstring, in float64, one pair."""
    a, b = qs[i].astype(np.float64), xs[j].astype(np.float64)
    if len(a) == 0 or len(b) == 0:
        return 0.0
    s = a @ b.T
    f = s.max(1).mean()
    return 0.5 * (f + s.max(0).mean()) if symmetric else f


def test_reference_matches_the_definition():
    rng = np.random.default_rng(0)
    qs = [rng.standard_normal((n, 8)) for n in (3, 0, 5)]
    xs = [rng.standard_normal((n, 8)) for n in (4, 2, 0)]
    q, qo = pack(qs, 8)
    x, xo = pack(xs, 8)
    pairs = np.array([(i, j) for i in range(3) for j in range(3)])
    for sym in (False, True):
        got = maxsim_reference(q, qo, x, xo, pairs, sym)
        want = [brute(qs, xs, i, j, sym) for i, j in pairs]
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_known_values():
    q, qo = pack([np.array([[1, 0], [0, 1]])], 2)
    x, xo = pack([np.array([[1, 0], [0.6, 0.8]])], 2)
    # rows: max(1, .6) = 1 and max(0, .8) = .8 → 0.9; columns: max(1, 0) = 1, max(.6, .8) = .8 → 0.9
    assert maxsim_pairs(q, qo, x, xo, [[0, 0]], backend="numpy")[0] == pytest.approx(0.9)
    x2, xo2 = pack([np.array([[1, 0]])], 2)
    assert maxsim_pairs(q, qo, x2, xo2, [[0, 0]], backend="numpy")[0] == pytest.approx(0.5)
    assert maxsim_pairs(q, qo, x2, xo2, [[0, 0]], symmetric=True, backend="numpy")[0] == pytest.approx(0.75)


@needs_cpu_kernel
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("dim", [1, 7, 16, 33, 128, 512])
@pytest.mark.parametrize("symmetric", [False, True])
def test_kernel_all_pairs_matches_reference(dtype, dim, symmetric):
    rng = np.random.default_rng(dim)
    # ragged: empty sets, single rows, lengths that are not multiples of the register block
    q, qo = ragged(rng, [0, 1, 2, 3, 5, 9, 17, 30], dim, dtype)
    x, xo = ragged(rng, [4, 0, 1, 6, 13, 29], dim, dtype)
    got = maxsim_all(q, qo, x, xo, symmetric, backend="cpu")
    assert got.shape == (8, 6) and got.dtype == np.float32
    grid = np.array([(i, j) for i in range(8) for j in range(6)])
    want = maxsim_reference(q, qo, x, xo, grid, symmetric).reshape(8, 6)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    assert np.all(got[0] == 0) and np.all(got[:, 1] == 0)  # empty sets score 0


@needs_cpu_kernel
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_kernel_candidate_pairs_match_reference(dtype):
    """Each sample against its own candidates: 16 samples × 7 candidates, 10–30 rows of 512."""
    rng = np.random.default_rng(1)
    q, qo = ragged(rng, rng.integers(10, 31, 16), 512, dtype)
    x, xo = ragged(rng, rng.integers(10, 31, 16 * 7), 512, dtype)
    pairs = np.array([(i, 7 * i + c) for i in range(16) for c in range(7)])
    for sym in (False, True):
        got = maxsim_pairs(q, qo, x, xo, pairs, sym, backend="cpu")
        np.testing.assert_allclose(got, maxsim_reference(q, qo, x, xo, pairs, sym), atol=1e-5, rtol=0)


@needs_cpu_kernel
def test_kernel_unnormalised_and_negative_values():
    rng = np.random.default_rng(2)
    q, qo = ragged(rng, [3, 4], 24, np.float32, unit=False)
    x, xo = ragged(rng, [5, 2], 24, np.float32, unit=False)
    q, x = -np.abs(q), np.abs(x)  # every dot product negative: max must not be clamped at 0
    got = maxsim_all(q, qo, x, xo, backend="cpu")
    assert np.all(got < 0)
    grid = np.array([(i, j) for i in range(2) for j in range(2)])
    np.testing.assert_allclose(got.ravel(), maxsim_reference(q, qo, x, xo, grid), rtol=1e-5)


@needs_cpu_kernel
def test_no_sets_and_no_pairs():
    q, qo = pack([], 4)
    x, xo = pack([np.ones((2, 4))], 4)
    assert maxsim_all(q, qo, x, xo, backend="cpu").shape == (0, 1)
    assert maxsim_pairs(x, xo, x, xo, np.zeros((0, 2)), backend="cpu").shape == (0,)


def test_bad_input_is_refused():
    q, qo = pack([np.ones((2, 4))], 4)
    x, xo = pack([np.ones((2, 5))], 5)
    with pytest.raises(ValueError, match="one D"):
        maxsim_all(q, qo, x, xo)
    with pytest.raises(ValueError, match="offsets"):
        maxsim_all(q, np.array([0, 3]), q, qo)
    with pytest.raises(ValueError, match="does not exist"):
        maxsim_pairs(q, qo, q, qo, [[0, 1]])
    with pytest.raises(TypeError, match="float32 or float16"):
        maxsim_all(q.astype(np.float64), qo, q.astype(np.float64), qo)
    with pytest.raises(ValueError, match="unknown MaxSim backend"):
        maxsim_all(q, qo, q, qo, backend="tpu")


def test_cuda_backend_runs_or_says_why():
    rng = np.random.default_rng(3)
    q, qo = ragged(rng, [0, 3, 11], 64, np.float32)
    x, xo = ragged(rng, [5, 0, 8], 64, np.float32)
    ok, why = cuda_status()
    if not ok:
        with pytest.raises(KernelUnavailable):
            maxsim_all(q, qo, x, xo, backend="cuda")
        pytest.skip(f"needs a CUDA GPU: {why}")
    grid = np.array([(i, j) for i in range(3) for j in range(3)])
    for sym in (False, True):
        np.testing.assert_allclose(maxsim_all(q, qo, x, xo, sym, backend="cuda").ravel(),
                                   maxsim_reference(q, qo, x, xo, grid, sym), atol=1e-5)


def test_padded_torch_maxsim_matches_the_reference():
    import numpy as np

    from kbridge.kernels.maxsim import maxsim_reference
    from kbridge.kernels.maxsim_torch import maxsim_pairs_torch

    rng = np.random.default_rng(0)
    q, q_off = rng.standard_normal((20, 8)).astype(np.float32), np.array([0, 3, 3, 10, 20])
    x, x_off = rng.standard_normal((15, 8)).astype(np.float32), np.array([0, 5, 5, 15])
    pairs = np.array([[i, j] for i in range(4) for j in range(3)])  # empty sets on both sides included
    for sym in (False, True):
        np.testing.assert_allclose(maxsim_pairs_torch(q, q_off, x, x_off, pairs, sym),
                                   maxsim_reference(q, q_off, x, x_off, pairs, sym), atol=1e-5)
