"""Properties of the scale searches (quantcli/core/search): never worse than round-to-nearest
on their objective, group by group; exact on weights the format represents; all-zero,
constant and outlier groups; every bit width; a group's result independent of the groups
passed with it. Errors are recomputed here from the definitions, in float64, independently
of the module's own error functions."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from quantcli.core.search import (
    E2M1,
    NF4,
    AffineParams,
    Grid,
    affine_error,
    affine_rtn,
    affine_search,
    codebook_grid,
    float_grid,
    hqq_params,
    int_grid,
    mse_scales,
    symmetric_error,
    symmetric_rtn_scales,
)
from quantcli.core.search.chunks import SEARCH_CHUNK_ELEMENTS, best_rows
from quantcli.errors import InputError, NonFiniteError, SpecError

BITS = range(2, 9)
GRIDS = [int_grid(b) for b in BITS] + [int_grid(b, full_range=True) for b in BITS] + [NF4, E2M1]


def grid_id(grid) -> str:
    return grid.name.replace(" ", "-")


def weights_of(x: np.ndarray, weights: str) -> np.ndarray:
    x = x.astype(np.float64)
    if weights == "plain":
        return np.ones_like(x)
    if weights == "square":
        return x * x
    return np.sqrt(np.mean(x * x, axis=1, keepdims=True)) + np.abs(x)


def symmetric_reference(x, scale, levels, weights="plain") -> np.ndarray:
    """E per group from the definition: codes = nearest level of x / scale (float32)."""
    t = x / scale[:, None].astype(np.float32)
    q = levels[np.abs(t[..., None] - levels).argmin(axis=-1)]
    x_hat = (q * scale[:, None]).astype(np.float32)
    err = x.astype(np.float64) - x_hat.astype(np.float64)
    return np.sum(weights_of(x, weights) * err * err, axis=1)


def affine_reference(x, p: AffineParams, bits: int, weights="plain") -> np.ndarray:
    nmax = 2**bits - 1
    s = p.scale[:, None]
    if p.offset is not None:
        m = p.offset[:, None]
        q = np.clip(np.rint((x - m) / s), 0, nmax).astype(np.float32)
        x_hat = q * s + m
    else:
        z = p.zero_point[:, None].astype(np.float32)
        q = np.clip(np.rint(x / s) + z, 0, nmax).astype(np.float32)
        x_hat = (q - z) * s
    err = x.astype(np.float64) - x_hat.astype(np.float64)
    return np.sum(weights_of(x, weights) * err * err, axis=1)


def mixed_groups(rng, n_groups: int, n: int) -> np.ndarray:
    """Gaussian, heavy-tailed, all-positive, constant, zero, outlier and tiny groups."""
    x = rng.standard_normal((n_groups, n)).astype(np.float32)
    x[1::7] = rng.standard_t(3, (len(x[1::7]), n))
    x[2::7] = np.abs(x[2::7]) + 0.5
    x[3::7] = 0
    x[4::7] = -1.25
    x[5::7] *= 1e-3
    x[5::7, 3] = 40  # a lone outlier
    x[6::7] *= 1e-30
    return x


@pytest.fixture(scope="module")
def groups():
    return mixed_groups(np.random.default_rng(7), 140, 32)


# -- level grids ---------------------------------------------------------------------------


@pytest.mark.parametrize("grid", GRIDS + [float_grid("e4m3", 4, 3, 448.0)], ids=grid_id)
def test_nearest_level_is_the_nearest(grid):
    rng = np.random.default_rng(1)
    t = (rng.standard_normal((16, 300)) * grid.highest * 0.7).astype(np.float32)
    t[0, : grid.levels.size] = grid.levels  # every level maps to itself
    out, work = np.empty_like(t), np.empty_like(t)
    grid.nearest(t, out, work)
    distance = np.abs(t[..., None] - grid.levels).min(axis=-1)
    np.testing.assert_array_equal(np.abs(t - out), distance)
    assert np.isin(out, grid.levels).all()
    np.testing.assert_array_equal(out[0, : grid.levels.size], grid.levels)


@pytest.mark.parametrize(
    "grid, dtype",
    [(E2M1, ml_dtypes.float4_e2m1fn), (float_grid("e4m3", 4, 3, 448.0), ml_dtypes.float8_e4m3fn)],
    ids=["e2m1", "e4m3"],
)
def test_float_grids_round_as_ml_dtypes(grid, dtype):
    rng = np.random.default_rng(2)
    t = (rng.standard_normal((8, 500)) * grid.highest / 3).astype(np.float32)
    half_steps = (grid.levels[1:] + grid.levels[:-1]) / 2  # every tie
    t[0, : half_steps.size] = half_steps
    out = np.empty_like(t)
    grid.nearest(t, out, np.empty_like(t))
    expected = np.clip(t, grid.lowest, grid.highest).astype(dtype).astype(np.float32)
    np.testing.assert_array_equal(out, expected)
    assert np.array_equal(E2M1.levels[E2M1.levels >= 0], [0, 0.5, 1, 1.5, 2, 3, 4, 6])


def test_grids_hold_the_formats_levels():
    assert np.array_equal(int_grid(4).levels, np.arange(-7, 8))
    assert np.array_equal(int_grid(4, full_range=True).levels, np.arange(-8, 8))
    assert NF4.levels.size == 16 and NF4.levels[0] == -1 and NF4.levels[-1] == 1
    with pytest.raises(SpecError):
        codebook_grid("no zero", [-1.0, 1.0])
    with pytest.raises(SpecError):
        int_grid(9)
    with pytest.raises(SpecError, match="needs its format"):
        Grid("no format", np.array([-1.0, 0.0, 1.0]), "float")
    with pytest.raises(SpecError, match="use fewer bits"):
        float_grid("e5m3", 5, 3, 57344.0)  # more than 128 non-negative values


# -- symmetric search ------------------------------------------------------------------------


@pytest.mark.parametrize("grid", GRIDS, ids=grid_id)
@pytest.mark.parametrize("weights", ["plain", "rms_abs"])
def test_mse_scales_never_worse_than_rtn(grid, weights, groups):
    rtn = symmetric_rtn_scales(groups, grid)
    found = mse_scales(groups, grid, weights=weights)
    assert found.dtype == np.float32 and found.shape == (len(groups),)
    assert np.all(np.isfinite(found)) and np.all(found != 0)
    e_found = symmetric_reference(groups, found, grid.levels, weights)
    e_rtn = symmetric_reference(groups, rtn, grid.levels, weights)
    assert np.all(e_found <= e_rtn * (1 + 1e-12))
    # and the module's own exact error agrees with the definition
    np.testing.assert_allclose(symmetric_error(groups, found, grid, weights), e_found, rtol=1e-9)
    if weights == "plain":
        gaussian = slice(0, None, 7)
        assert e_found[gaussian].sum() < 0.97 * e_rtn[gaussian].sum()


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_mse_scales_mirrored_grid_never_worse_than_its_rtn(bits, groups):
    grid = int_grid(bits, full_range=True)
    rtn = symmetric_rtn_scales(groups, grid, mirror=True)
    # Q4_0's rule: the value of largest magnitude lands on -2^(b-1)
    live = np.abs(groups).max(axis=1) > 0
    extreme = groups[np.arange(len(groups)), np.abs(groups).argmax(axis=1)]
    np.testing.assert_allclose(rtn[live], extreme[live] / -(2 ** (bits - 1)), rtol=1e-6)
    found = mse_scales(groups, grid, mirror=True, weights="plain")
    e_found = symmetric_reference(groups, found, grid.levels)
    assert np.all(e_found <= symmetric_reference(groups, rtn, grid.levels))


@pytest.mark.parametrize("grid", GRIDS, ids=grid_id)
def test_representable_weights_come_back_exactly(grid):
    rng = np.random.default_rng(3)
    n_groups, n = 40, 32
    scale = (2.0 ** rng.integers(-12, 6, n_groups)).astype(np.float32)
    codes = rng.integers(0, grid.levels.size, (n_groups, n))
    codes[:, 0], codes[:, 1] = 0, grid.levels.size - 1  # both ends in every group
    x = (grid.levels[codes] * scale[:, None]).astype(np.float32)
    for weights in ("plain", "rms_abs"):
        found = mse_scales(x, grid, weights=weights)
        assert np.all(symmetric_reference(x, found, grid.levels) == 0)


def test_zero_constant_and_outlier_groups():
    grid = int_grid(4)
    x = np.zeros((4, 16), np.float32)
    x[1] = 0.3
    x[2] = -7.0
    x[3, :] = 0.01
    x[3, 5] = 1000.0
    found = mse_scales(x, grid, weights="plain")
    assert found[0] == 1  # quant's rule for an all-zero group
    e = symmetric_reference(x, found, grid.levels)
    assert e[0] == 0
    assert np.all(e <= symmetric_reference(x, symmetric_rtn_scales(x, grid), grid.levels))
    # the outlier is kept: no scale that maps 1000 far outside the grid
    assert found[3] * 7 > 900


def test_mse_scales_are_stored_scales_and_beat_stored_rtn(groups):
    grid = int_grid(4)
    found = mse_scales(groups, grid, scale_dtype=np.float16, weights="plain")
    np.testing.assert_array_equal(found, found.astype(np.float16).astype(np.float32))
    rtn = symmetric_rtn_scales(groups, grid, scale_dtype=np.float16)
    np.testing.assert_array_equal(rtn, rtn.astype(np.float16).astype(np.float32))
    assert np.all(
        symmetric_reference(groups, found, grid.levels)
        <= symmetric_reference(groups, rtn, grid.levels)
    )


def test_mse_scales_beats_the_scales_it_is_given(groups):
    grid = int_grid(3)
    given = symmetric_rtn_scales(groups, grid) * np.float32(0.8)
    given[given == 0] = 1
    found = mse_scales(groups, grid, rtn=given, weights="square")
    e_found = symmetric_reference(groups, found, grid.levels, "square")
    assert np.all(e_found <= symmetric_reference(groups, given, grid.levels, "square") * 1.0001)


def test_explicit_weights_steer_the_search():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((200, 32)).astype(np.float32)
    w = np.ones_like(x)
    w[:, :4] = 1000  # the first four values matter most
    grid = int_grid(3)
    found = mse_scales(x, grid, weights=w)
    err = symmetric_reference(x, found, grid.levels, "plain")
    first = np.sum(
        (x[:, :4] - found[:, None] * np.clip(np.rint(x[:, :4] / found[:, None]), -3, 3)) ** 2
    )
    plain = mse_scales(x, grid, weights="plain")
    first_plain = np.sum(
        (x[:, :4] - plain[:, None] * np.clip(np.rint(x[:, :4] / plain[:, None]), -3, 3)) ** 2
    )
    assert first < 0.5 * first_plain
    assert err.sum() > symmetric_reference(x, plain, grid.levels).sum()


# -- affine search and HQQ -------------------------------------------------------------------


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("offset", ["float", "integer"])
@pytest.mark.parametrize("weights", ["plain", "rms_abs"])
def test_affine_search_never_worse_than_rtn(bits, offset, weights, groups):
    rtn = affine_rtn(groups, bits, offset)
    found = affine_search(groups, bits, offset, weights=weights)
    assert found.scale.dtype == np.float32 and np.all(found.scale > 0)
    if offset == "float":
        assert found.offset.dtype == np.float32 and np.all(found.offset <= 0)
    else:
        assert found.zero_point.dtype == np.uint8
        assert np.all(found.zero_point <= 2**bits - 1)
    e_found = affine_reference(groups, found, bits, weights)
    assert np.all(e_found <= affine_reference(groups, rtn, bits, weights) * (1 + 1e-12))
    np.testing.assert_allclose(affine_error(groups, found, bits, weights), e_found, rtol=1e-9)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("offset", ["float", "integer"])
def test_hqq_never_worse_than_rtn(bits, offset, groups):
    found = hqq_params(groups, bits, offset)
    rtn = affine_rtn(groups, bits, offset, nonpositive_offset=False)
    e_found = affine_reference(groups, found, bits)
    assert np.all(e_found <= affine_reference(groups, rtn, bits))
    stopped = hqq_params(groups, bits, offset, early_stop=True)
    assert np.all(affine_reference(groups, stopped, bits) <= affine_reference(groups, rtn, bits))


def test_rtn_parameters_follow_the_conventions():
    x = np.array([[-1.0, 0.5, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0]], np.float32)
    zp = affine_rtn(x, 4, "integer")
    # quant's zeropoint: the range holds 0; scale = (hi - lo) / 15, zp = rint(-lo / scale)
    np.testing.assert_allclose(zp.scale, [3 / 15, 4 / 15], rtol=1e-7)
    np.testing.assert_array_equal(zp.zero_point, [5, 0])
    q4_1 = affine_rtn(x, 4, "float", nonpositive_offset=False)
    np.testing.assert_allclose(q4_1.scale, [3 / 15, 3 / 15], rtol=1e-7)
    np.testing.assert_array_equal(q4_1.offset, [-1, 1])
    clamped = affine_rtn(x, 4, "float")
    np.testing.assert_array_equal(clamped.offset, [-1, 0])


@pytest.mark.parametrize("offset", ["float", "integer"])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_affine_representable_weights_come_back_exactly(offset, bits):
    rng = np.random.default_rng(5)
    n_groups, n, nmax = 30, 32, 2**bits - 1
    scale = (2.0 ** rng.integers(-10, 4, n_groups)).astype(np.float32)
    codes = rng.integers(0, nmax + 1, (n_groups, n))
    codes[:, 0], codes[:, 1] = 0, nmax
    zero = rng.integers(0, nmax + 1, n_groups)
    x = ((codes - zero[:, None]) * scale[:, None]).astype(np.float32)
    for found in (
        affine_search(x, bits, offset),
        affine_search(x, bits, offset, weights="plain"),
        hqq_params(x, bits, offset),
    ):
        assert np.all(affine_reference(x, found, bits) == 0)


@pytest.mark.parametrize("offset", ["float", "integer"])
def test_affine_zero_and_constant_groups(offset):
    x = np.zeros((3, 8), np.float32)
    x[1], x[2] = 2.5, -3.0
    for found in (affine_search(x, 4, offset), hqq_params(x, 4, offset)):
        assert np.all(affine_reference(x, found, 4) == 0)
        assert found.scale[0] == 1


def test_hqq_follows_hqqs_update_rule():
    """HQQ's loop written as HQQ writes it (W_f * scale + zero with the inverse scale, in
    float64), per group with HQQ's stop: the same zero point. Groups whose run meets a
    knife edge (two iterations with equal errors up to rounding, or a value within 1e-4 of
    a rounding tie) are left out: float32 and float64 may take either side there."""
    rng = np.random.default_rng(6)
    compared = 0
    for bits, magnitude in ((2, 1.0), (3, 1.0), (4, 1.0), (4, 0.02), (3, 0.02)):
        w = (rng.standard_normal((12, 64)) * magnitude).astype(np.float32)
        found = hqq_params(w, bits, "float", early_stop=True)
        for g in range(len(w)):
            expected = _hqq_reference(w[g].astype(np.float64), bits)
            if expected is None:
                continue
            scale, zero = expected
            np.testing.assert_allclose(found.scale[g], scale, rtol=1e-6)
            np.testing.assert_allclose(-found.offset[g] / found.scale[g], zero, atol=2e-5)
            compared += 1
    assert compared >= 20


def _hqq_reference(w: np.ndarray, bits: int, iters=20, p=0.7, beta=10.0, kappa=1.01):
    """(scale, zero) of one group, or None at a knife edge or where round-to-nearest wins."""
    nmax = 2**bits - 1
    lo, hi = w.min(), w.max()
    s_inv = nmax / (hi - lo)
    zero = -lo * s_inv
    best, best_zero = np.inf, zero
    for _ in range(iters):
        t = w * s_inv + zero
        if np.any(np.abs(t - np.floor(t) - 0.5) < 1e-4):
            return None
        w_q = np.clip(np.round(t), 0, nmax)
        w_r = (w_q - zero) / s_inv
        d = w - w_r
        with np.errstate(divide="ignore"):
            w_e = np.sign(d) * np.maximum(np.abs(d) - np.abs(d) ** (p - 1) / beta, 0)
        error = np.abs(d).mean()
        if abs(error - best) < 1e-6 * error:
            return None
        if error < best:
            best, best_zero = error, zero
        else:
            break
        zero = np.mean(w_q - (w - w_e) * s_inv)
        beta *= kappa
    # the result is kept only where it beats round-to-nearest
    rtn_scale = (hi - lo) / nmax
    q = np.clip(np.rint((w - lo) / rtn_scale), 0, nmax)
    e_rtn = np.sum((w - (q * rtn_scale + lo)) ** 2)
    q = np.clip(np.rint(w * s_inv + best_zero), 0, nmax)
    e_hqq = np.sum((w - (q - best_zero) / s_inv) ** 2)
    if abs(e_hqq - e_rtn) < 1e-6 * e_rtn:
        return None
    return (1 / s_inv, best_zero) if e_hqq < e_rtn else None


# -- independence, chunking, input checks --------------------------------------------------


def _runs():
    return [
        ("mse int4", lambda x: mse_scales(x, int_grid(4))),
        ("mse nf4", lambda x: mse_scales(x, NF4, weights="plain")),
        ("mse e2m1", lambda x: mse_scales(x, E2M1, weights="square")),
        ("affine float", lambda x: _flat(affine_search(x, 3))),
        ("affine integer", lambda x: _flat(affine_search(x, 4, "integer"))),
        ("hqq float", lambda x: _flat(hqq_params(x, 2))),
        ("hqq early stop", lambda x: _flat(hqq_params(x, 3, early_stop=True))),
        ("hqq integer", lambda x: _flat(hqq_params(x, 4, "integer"))),
    ]


def _flat(p: AffineParams) -> np.ndarray:
    other = p.offset if p.offset is not None else p.zero_point.astype(np.float32)
    return np.stack([p.scale, other], axis=1)


@pytest.mark.parametrize("label, run", _runs(), ids=[r[0] for r in _runs()])
def test_a_groups_result_does_not_depend_on_its_neighbours(label, run):
    rng = np.random.default_rng(8)
    n = 64
    per_chunk = SEARCH_CHUNK_ELEMENTS // n
    x = mixed_groups(rng, per_chunk + 37, n)  # two chunks, the second ragged
    x[::3] *= 1 + rng.standard_normal((len(x[::3]), 1)).astype(np.float32)
    together = run(x)
    picks = [0, 1, 2, 5, 6, per_chunk - 1, per_chunk, per_chunk + 36]
    for g in picks:
        np.testing.assert_array_equal(run(x[g : g + 1])[0], together[g], err_msg=f"group {g}")
    np.testing.assert_array_equal(run(x[3:40]), together[3:40])
    np.testing.assert_array_equal(run(x[::-1])[::-1], together)


def test_bad_input_is_refused():
    x = np.ones((4, 8), np.float32)
    with pytest.raises(InputError):
        mse_scales(np.ones(8, np.float32), int_grid(4))
    with pytest.raises(SpecError):
        mse_scales(x, int_grid(4), weights="cubic")
    with pytest.raises(InputError):
        mse_scales(x, int_grid(4), weights=np.ones((4, 7)))
    with pytest.raises(SpecError):
        affine_search(x, 9)
    with pytest.raises(SpecError):
        affine_search(x, 4, "half")
    with pytest.raises(SpecError):
        hqq_params(x, 4, lp_norm=2.0)
    bad = x.copy()
    bad[2, 3] = np.nan
    for search in (
        lambda: mse_scales(bad, int_grid(4)),
        lambda: affine_search(bad, 4),
        lambda: hqq_params(bad, 4),
    ):
        with pytest.raises(NonFiniteError):
            search()


def test_extreme_magnitudes_stay_finite(strict_numerics):
    x = np.array(
        [[3e38, -3.3e38, 1e38, 0], [1e-40, -3e-41, 0, 5e-45], [1e-20, 2e-20, -1e-20, 0]],
        np.float32,
    )
    with strict_numerics():
        results = [
            mse_scales(x, int_grid(4)),
            mse_scales(x, E2M1),
            affine_search(x, 4).scale,
            affine_search(x, 4, "integer").scale,
            hqq_params(x, 4).scale,
        ]
    for r in results:
        assert np.all(np.isfinite(r)) and np.all(r != 0)


def test_best_rows_is_the_first_argmax():
    rng = np.random.default_rng(9)
    score = rng.standard_normal((24, 500)).astype(np.float32)
    score[:, :50] = np.abs(score[:, :50]) * 1e-30  # tiny and subnormal values
    score[5, 60:70] = -np.inf
    score[:, 70:80] = -np.inf  # a column with no candidate
    score[3, 80:90] = score[:, 80:90].max(axis=0) + 1
    score[7, 80:90] = score[3, 80:90]  # a tie: the first row wins
    np.testing.assert_array_equal(best_rows(score), np.argmax(score, axis=0))
    wide = rng.standard_normal((40, 30)).astype(np.float32)  # more rows than the key holds
    np.testing.assert_array_equal(best_rows(wide), np.argmax(wide, axis=0))
