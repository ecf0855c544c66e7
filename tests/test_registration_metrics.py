"""Registration evaluation metrics: HD95 between label surfaces, RMS / robust pooling, Jacobian-based regularity."""

import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from scipy.spatial.distance import cdist

from leancnn.losses.registration_metrics import (
    field_regularity,
    folding_fraction,
    hausdorff95_mm,
    jacobian_determinant,
    rms,
    robust_subset,
    std_log_jacobian,
)

SHAPE = (20, 18, 16)


def grid(shape=SHAPE):
    return np.stack(np.meshgrid(*(np.arange(n, dtype=np.float64) for n in shape), indexing="ij"))  # (3, X, Y, Z)


def affine_ddf(a, t=(0.0, 0.0, 0.0), shape=SHAPE):
    """u(x) = (A - I) x + t on the voxel grid, (3, X, Y, Z)."""
    x = grid(shape)
    return np.einsum("cd,dxyz->cxyz", np.asarray(a) - np.eye(3), x) + np.asarray(t)[:, None, None, None]


A = np.array([[1.2, 0.3, 0.0],
              [0.0, 0.9, 0.1],
              [-0.2, 0.0, 1.1]])


# ------------------------------------------------------------------------------------------------ Jacobian
def test_affine_field_has_constant_determinant():
    ddf = affine_ddf(A, t=(1.5, -2.0, 0.25))
    det = jacobian_determinant(ddf)
    assert det.shape == SHAPE and det.dtype == np.float64
    np.testing.assert_allclose(det, np.linalg.det(A), rtol=0, atol=1e-9)  # borders included (one-sided, exact)
    assert folding_fraction(ddf) == 0.0
    assert std_log_jacobian(ddf) == pytest.approx(0.0, abs=1e-9)
    reg = field_regularity(ddf)
    assert reg["folding"] == 0.0 and reg["std_log_jac"] == pytest.approx(0.0, abs=1e-9)


def test_zero_field_and_batched_torch_float32():
    det = jacobian_determinant(np.zeros((3, *SHAPE)))
    np.testing.assert_array_equal(det, np.ones(SHAPE))
    batch = torch.from_numpy(np.stack([affine_ddf(A), np.zeros((3, *SHAPE))])).float()
    det = jacobian_determinant(batch)
    assert det.shape == (2, *SHAPE) and det.dtype == np.float64
    np.testing.assert_allclose(det[0], np.linalg.det(A), atol=1e-5)  # float32 input: rounding of the field itself
    np.testing.assert_array_equal(det[1], 1.0)


def test_component_c_is_displacement_along_axis_c():
    # u_y = 0.5 * y: det 1.5; the same ramp put in component 0 (u_x = 0.5 * y) is a shear, det 1
    y = grid()[1]
    ddf = np.zeros((3, *SHAPE))
    ddf[1] = 0.5 * y
    np.testing.assert_allclose(jacobian_determinant(ddf), 1.5, atol=1e-12)
    ddf = np.zeros((3, *SHAPE))
    ddf[0] = 0.5 * y
    np.testing.assert_allclose(jacobian_determinant(ddf), 1.0, atol=1e-12)


def test_fully_folded_field():
    ddf = np.zeros((3, *SHAPE))
    ddf[0] = -2.0 * grid()[0]  # x -> -x: det = -1 everywhere
    np.testing.assert_allclose(jacobian_determinant(ddf), -1.0, atol=1e-12)
    assert folding_fraction(ddf) == 1.0
    assert std_log_jacobian(ddf) == pytest.approx(0.0, abs=1e-12)  # every det clipped to the same 1e-9


def test_folding_in_a_known_block():
    # u_x(i) = -2 i for i <= m, then constant -2 m. np.gradient: -2 for i < m (forward difference at i = 0),
    # (u[m+1] - u[m-1]) / 2 = -1 at i = m (det exactly 0: counts as folded), 0 beyond (det 1).
    m, n = 7, SHAPE[0]
    i = grid()[0]
    ddf = np.zeros((3, *SHAPE))
    ddf[0] = np.where(i <= m, -2.0 * i, -2.0 * m)
    det = jacobian_determinant(ddf)
    np.testing.assert_array_equal(det[:m], -1.0)
    np.testing.assert_array_equal(det[m], 0.0)
    np.testing.assert_array_equal(det[m + 1:], 1.0)
    assert folding_fraction(ddf) == (m + 1) / n
    # one batch item folded in that block, the other not folded at all: fraction over all voxels of the batch
    assert folding_fraction(np.stack([ddf, np.zeros_like(ddf)])) == (m + 1) / (2 * n)


def test_std_log_jacobian_of_two_determinants_in_known_proportions():
    # two affine fields of det 2 and det 0.5, equal voxel counts: log det = +-ln 2, std = ln 2
    d1, d2 = np.diag([2.0, 1.0, 1.0]), np.diag([1.0, 0.5, 1.0])
    batch = np.stack([affine_ddf(d1), affine_ddf(d2)])
    assert std_log_jacobian(batch) == pytest.approx(math.log(2.0), abs=1e-12)
    # folded half clipped to 1e-9: logs 0 and ln(1e-9) in equal parts, std = 9 ln(10) / 2
    folded = np.zeros((3, *SHAPE))
    folded[0] = -2.0 * grid()[0]
    reg = field_regularity(np.stack([np.zeros((3, *SHAPE)), folded]))
    assert reg["std_log_jac"] == pytest.approx(9.0 * math.log(10.0) / 2.0, rel=1e-12)
    assert reg["folding"] == 0.5


def test_std_log_jacobian_of_a_piecewise_linear_field():
    # u_x slope a for i < m, (a + b) / 2 at i = m, b beyond: det 1 + a (m slices), 1 + (a + b) / 2 (one), 1 + b (rest)
    a, b, m, n = 1.0, -0.5, 5, SHAPE[0]
    i = grid()[0]
    ddf = np.zeros((3, *SHAPE))
    ddf[0] = np.where(i <= m, a * i, a * m + b * (i - m))
    logs = np.array([math.log(1 + a)] * m + [math.log(1 + (a + b) / 2)] + [math.log(1 + b)] * (n - m - 1))
    assert std_log_jacobian(ddf) == pytest.approx(float(np.std(logs)), rel=1e-12)
    assert std_log_jacobian(torch.from_numpy(ddf)[None]) == pytest.approx(float(np.std(logs)), rel=1e-12)


@pytest.mark.parametrize("bad, match", [
    (np.zeros((2, *SHAPE)), "3 components"),
    (np.zeros((1, 2, *SHAPE)), "3 components"),
    (np.zeros(SHAPE), "shape"),
    (np.zeros((1, 1, 3, *SHAPE)), "shape"),
    (np.zeros((3, 1, 4, 4)), "at least 2 voxels"),
    (np.zeros((0, 3, 4, 4, 4)), "batch"),
    (np.zeros((3, 4, 4, 4), dtype=bool), "numeric"),
    ([[0.0]], "torch tensor or numpy array"),
])
def test_bad_fields(bad, match):
    for fn in (jacobian_determinant, folding_fraction, std_log_jacobian, field_regularity):
        with pytest.raises(ValueError, match=match) as info:
            fn(bad)
        assert "ddf" in str(info.value)


def test_non_finite_field():
    ddf = np.zeros((3, 4, 4, 4))
    ddf[1, 2, 2, 2] = np.nan
    with pytest.raises(ValueError, match="ddf contains non-finite"):
        folding_fraction(ddf)
    ddf[1, 2, 2, 2] = np.inf
    with pytest.raises(ValueError, match="ddf contains non-finite"):
        jacobian_determinant(torch.from_numpy(ddf))


# -------------------------------------------------------------------------------------------------- HD95
def brute_hd95(a, b, spacing):
    """Reference: surface = mask voxels with a face neighbour outside the (zero-padded) mask; all-pairs cdist."""
    def surface(m):
        p = np.pad(m, 1)
        inner = np.ones_like(m)
        for axis in range(3):
            for shift in (-1, 1):
                inner &= np.roll(p, shift, axis=axis)[1:-1, 1:-1, 1:-1]
        return np.argwhere(m & ~inner) * np.asarray(spacing, dtype=np.float64)

    sa, sb = surface(a), surface(b)
    d = cdist(sa, sb)
    return max(np.percentile(d.min(axis=1), 95), np.percentile(d.min(axis=0), 95))


def test_identical_masks_give_zero():
    m = np.zeros((12, 12, 12))
    m[3:9, 2:7, 4:10] = 1
    assert hausdorff95_mm(m, m, spacing=(0.8, 1.0, 2.5)) == 0.0


@pytest.mark.parametrize("k, spacing", [(1, 1.0), (3, 1.0), (2, 2.0), (3, (0.5, 2.0, 3.0))])
def test_parallel_slabs(k, spacing):
    # one-voxel-thick slabs spanning the whole (Y, Z) plane: every surface voxel's nearest surface voxel on the other
    # slab is straight across along x, so all directed distances are k * spacing_x
    a, b = np.zeros(SHAPE), np.zeros(SHAPE)
    a[4], b[4 + k] = 1, 1
    sx = spacing if np.isscalar(spacing) else spacing[0]
    assert hausdorff95_mm(a, b, spacing) == pytest.approx(k * sx, abs=1e-12)


def test_anisotropic_spacing_uses_the_shift_axis():
    spacing = (0.5, 2.0, 3.0)
    for axis in range(3):
        a, b = np.zeros(SHAPE), np.zeros(SHAPE)
        index_a, index_b = [slice(None)] * 3, [slice(None)] * 3
        index_a[axis], index_b[axis] = 5, 7
        a[tuple(index_a)], b[tuple(index_b)] = 1, 1
        assert hausdorff95_mm(a, b, spacing) == pytest.approx(2 * spacing[axis], abs=1e-12)


def test_percentile_ignores_a_single_far_voxel():
    a = np.zeros(SHAPE)
    a[4] = 1
    b = a.copy()
    a[15, 3, 3] = 1  # 1 of 289 surface voxels of A is 11 voxels away: P95 of A -> B stays 0 (max HD would be 11)
    assert hausdorff95_mm(a, b) == 0.0


@pytest.mark.parametrize("spacing", [1.0, (0.7, 1.3, 2.1)])
def test_shifted_cube_matches_brute_force(spacing):
    a = np.zeros((16, 16, 16), dtype=bool)
    a[3:10, 4:11, 2:9] = True
    b = np.roll(a, 3, axis=0)
    expected = brute_hd95(a, b, spacing)
    assert hausdorff95_mm(a, b, spacing) == pytest.approx(expected, abs=1e-12)
    assert 0 < expected <= 3 * (spacing if np.isscalar(spacing) else spacing[0])


def test_random_blobs_match_brute_force():
    # smooth concave blobs touching the grid border: with these seeds 26-connected erosion or border_value=1 (grid
    # border voxels not surface) would each give another value, so this pins both conventions
    rng = np.random.default_rng(0)
    for _ in range(4):
        a = ndimage.gaussian_filter(rng.standard_normal((16, 16, 16)), 2) > 0
        b = ndimage.gaussian_filter(rng.standard_normal((16, 16, 16)), 2) > 0
        spacing = tuple(rng.uniform(0.5, 2.0, 3))
        assert hausdorff95_mm(a.astype(np.float32), b, spacing) == pytest.approx(brute_hd95(a, b, spacing),
                                                                                  abs=1e-12)


def test_threshold_torch_and_empty_masks():
    a = np.zeros((1, 1, *SHAPE), dtype=np.float32)
    a[0, 0, 4] = 0.6
    b = np.zeros(SHAPE, dtype=np.float32)
    b[6] = 0.5  # >= 0.5 is inside
    assert hausdorff95_mm(torch.from_numpy(a), torch.from_numpy(b), spacing=torch.tensor([1.5, 1.0, 1.0])) \
        == pytest.approx(3.0)
    assert hausdorff95_mm(a, b, threshold=0.55) is None  # b empty at that threshold
    assert hausdorff95_mm(np.zeros(SHAPE), b) is None
    assert hausdorff95_mm(np.zeros(SHAPE), np.zeros(SHAPE)) is None


@pytest.mark.parametrize("kwargs, match", [
    (dict(a=np.zeros((4, 4, 4)), b=np.zeros((4, 4, 5))), "same grid"),
    (dict(a=np.zeros((2, 4, 4, 4)), b=np.zeros((2, 4, 4, 4))), "^a must be one 3-D"),
    (dict(a=np.zeros((4, 4, 4)), b=np.full((4, 4, 4), np.nan)), "^b contains NaN"),
    (dict(a=np.zeros((4, 4, 4)), b=np.zeros((4, 4, 4)), spacing=0.0), "^spacing"),
    (dict(a=np.zeros((4, 4, 4)), b=np.zeros((4, 4, 4)), spacing=(1.0, 1.0)), "^spacing"),
    (dict(a=np.zeros((4, 4, 4)), b=np.zeros((4, 4, 4)), spacing=(1.0, np.inf, 1.0)), "^spacing"),
    (dict(a=np.zeros((4, 4, 4)), b=np.zeros((4, 4, 4)), threshold=float("nan")), "^threshold"),
])
def test_hd95_bad_inputs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        hausdorff95_mm(**kwargs)


# ----------------------------------------------------------------------------------------------- pooling
def test_rms():
    assert rms([3, 4]) == pytest.approx(math.sqrt(12.5), rel=1e-15)
    assert rms([None, 3.0, None, np.float32(4.0), torch.tensor(0.0)]) == pytest.approx(math.sqrt(25 / 3), rel=1e-7)
    assert rms([None, None]) is None
    assert rms([]) is None
    assert rms(np.array([2.0, 2.0])) == 2.0


def test_robust_subset_drops_the_worst():
    dice = [0.9, 0.1, 0.8, 0.5, 0.7, 0.2, 0.95, 0.6, 0.3, 0.85]  # n = 10, floor(3.2) = 3 removed
    assert robust_subset(dice) == [0.9, 0.8, 0.5, 0.7, 0.95, 0.6, 0.85]
    tre = [1.0, 9.0, 2.0, None, 8.0, 3.0, 7.0, 4.0, 5.0, 6.0, 0.5]  # None excluded: n = 10, the 3 highest go
    assert robust_subset(tre, higher_is_better=False) == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 0.5]


def test_robust_subset_counts():
    rng = np.random.default_rng(1)
    values = list(rng.permutation(25).astype(float))
    kept = robust_subset(values, 0.32)  # floor(0.32 * 25) = 8 removed
    assert len(kept) == 17 and sorted(kept) == [float(v) for v in range(8, 25)]
    kept = robust_subset(values, 0.32, higher_is_better=False)
    assert len(kept) == 17 and sorted(kept) == [float(v) for v in range(17)]
    assert kept == [v for v in values if v < 17]  # input order kept
    assert len(robust_subset(list(range(100)), 0.29)) == 71  # 0.29 * 100 = 28.999...: still 29 removed
    assert len(robust_subset(list(range(24)), 0.32)) == 17  # floor(7.68) = 7 removed
    assert robust_subset([5.0], 0.9) == [5.0]  # at least one kept
    assert robust_subset([1.0, 2.0], 0.999, higher_is_better=False) == [1.0]
    assert robust_subset([None, None]) == []
    assert robust_subset([3.0, 1.0, 2.0], 0.0) == [3.0, 1.0, 2.0]


def test_robust_subset_ties_are_removed_in_input_order():
    assert robust_subset([0.5, 0.5, 0.9], drop=0.34) == [0.5, 0.9]


@pytest.mark.parametrize("drop", [-0.1, 1.0, 1.5, float("nan"), True, "0.3", None])
def test_robust_subset_bad_drop(drop):
    with pytest.raises(ValueError, match="^drop"):
        robust_subset([1.0, 2.0], drop=drop)


@pytest.mark.parametrize("values, match", [
    ([1.0, float("nan")], r"values\[1\]"),
    ([1.0, float("inf")], r"values\[1\]"),
    ([1.0, "2"], r"values\[1\]"),
    ([True], r"values\[0\]"),
    ("12", "^values"),
    (3.0, "^values"),
    (None, "^values"),
])
def test_pooling_bad_values(values, match):
    with pytest.raises(ValueError, match=match):
        rms(values)
    with pytest.raises(ValueError, match=match):
        robust_subset(values)


def test_robust_subset_bad_direction():
    with pytest.raises(ValueError, match="^higher_is_better"):
        robust_subset([1.0], higher_is_better="yes")
