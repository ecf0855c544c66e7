"""Registration ops (label-reg conventions) against analytic values: warping, affine DDFs, world grids, label losses,
regularisers and the centroid-TRE / Dice metrics."""

from __future__ import annotations

import itertools
import math

import nibabel as nib
import numpy as np
import pytest
import scipy.ndimage as ndi
import torch

from leancnn.losses.registration import (
    bending_energy,
    binary_dice,
    centroid,
    centroid_distance_mm,
    gaussian_kernel1d,
    gaussian_smooth,
    gradient_l1,
    gradient_l2,
    label_cross_entropy,
    multiscale_dice_loss,
    soft_dice,
)
from leancnn.nn.warp import (
    affine_to_ddf,
    identity_grid,
    identity_theta,
    resize_volume,
    voxel_spacing,
    voxel_to_voxel,
    warp,
    world_affine,
)

D = torch.float64


def rand_volume(shape, seed=0, channels=1, batch=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, channels, *shape, generator=g, dtype=D)


def zero_ddf(shape, batch=1):
    return torch.zeros(batch, 3, *shape, dtype=D)


def field(shape, fn, component):
    """A DDF whose ``component`` is fn(x, y, z) on voxel indices, the others 0."""
    x, y, z = identity_grid(shape, dtype=D)[0]
    ddf = zero_ddf(shape)
    ddf[0, component] = fn(x, y, z)
    return ddf


def cube(shape, lo, size):
    m = torch.zeros(1, 1, *shape, dtype=D)
    m[0, 0, lo[0]:lo[0] + size, lo[1]:lo[1] + size, lo[2]:lo[2] + size] = 1.0
    return m


# ------------------------------------------------------------------------------------------------------------ warp
def test_identity_grid_holds_voxel_indices():
    g = identity_grid((3, 4, 5), dtype=D)
    assert g.shape == (1, 3, 3, 4, 5)
    assert g[0, :, 2, 1, 4].tolist() == [2.0, 1.0, 4.0]
    assert g[0, 0, :, 0, 0].tolist() == [0.0, 1.0, 2.0]


@pytest.mark.parametrize("padding", ["zeros", "border"])
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_zero_ddf_is_identity_including_the_last_slice(mode, padding):
    moving = rand_volume((7, 8, 9), channels=2, batch=2)
    out = warp(moving, zero_ddf((7, 8, 9), batch=2), mode=mode, padding=padding)
    assert out.shape == moving.shape and out.dtype == D
    torch.testing.assert_close(out, moving, atol=1e-12, rtol=0)  # label-reg would zero the last slices here
    out32 = warp(moving.float(), zero_ddf((7, 8, 9), batch=2).float(), mode=mode, padding=padding)
    torch.testing.assert_close(out32, moving.float(), atol=1e-6, rtol=0)


def test_integer_shifts_move_the_volume_by_that_many_voxels():
    moving = rand_volume((8, 9, 10))
    ddf = zero_ddf((8, 9, 10))
    ddf[:, 0] = 2.0
    ddf[:, 1] = -3.0
    out = warp(moving, ddf, padding="zeros")
    torch.testing.assert_close(out[..., :6, 3:, :], moving[..., 2:, :6, :], atol=1e-12, rtol=0)
    assert out[..., 6:, :, :].abs().max() == 0 and out[..., :, :3, :].abs().max() == 0
    border = warp(moving, ddf, padding="border")
    torch.testing.assert_close(border[..., 6:, 3:, :], moving[..., 7:8, :6, :].expand(-1, -1, 2, -1, -1),
                               atol=1e-12, rtol=0)
    torch.testing.assert_close(border[..., :6, :3, :], moving[..., 2:, 0:1, :].expand(-1, -1, -1, 3, -1),
                               atol=1e-12, rtol=0)


def test_fractional_shifts_are_trilinear_per_axis():
    """A volume linear in (i, j, k) is reproduced exactly by trilinear sampling: catches swapped axes."""
    shape = (6, 7, 8)
    x, y, z = identity_grid(shape, dtype=D)[0]
    moving = (1 + x + 10 * y + 100 * z)[None, None]
    ddf = zero_ddf(shape)
    ddf[:, 0], ddf[:, 1], ddf[:, 2] = 0.25, 0.5, -0.75
    out = warp(moving, ddf)
    expected = 1 + (x + 0.25) + 10 * (y + 0.5) + 100 * (z - 0.75)
    torch.testing.assert_close(out[0, 0, :-1, :-1, 1:], expected[:-1, :-1, 1:], atol=1e-10, rtol=0)


def test_zero_padding_fades_over_one_voxel_and_keeps_the_last_voxel():
    moving = torch.ones(1, 1, 5, 5, 5, dtype=D)
    ddf = zero_ddf((5, 5, 5))
    ddf[:, 0] = 0.5  # the last slice now looks half a voxel beyond the grid
    out = warp(moving, ddf, padding="zeros")
    torch.testing.assert_close(out[..., -1, :, :], torch.full_like(out[..., -1, :, :], 0.5))
    torch.testing.assert_close(out[..., :-1, :, :], torch.ones_like(out[..., :-1, :, :]))
    ddf[:, 0] = -1.0
    out = warp(moving, ddf, padding="zeros")
    assert out[..., 0, :, :].abs().max() == 0
    assert warp(moving, ddf, padding="border").min() == 1.0


def test_affine_ddf_conventions():
    shape = (4, 5, 6)
    torch.testing.assert_close(affine_to_ddf(identity_theta(2, dtype=D), shape), zero_ddf(shape, batch=2))
    theta = identity_theta(1, dtype=D)
    theta[0, :, 3] = torch.tensor([1.5, -2.0, 0.25], dtype=D)
    ddf = affine_to_ddf(theta, shape)
    torch.testing.assert_close(ddf[0, :, 3, 4, 5], torch.tensor([1.5, -2.0, 0.25], dtype=D))
    theta = identity_theta(1, dtype=D) * 2.0  # scaling about voxel (0, 0, 0), not the centre
    ddf = affine_to_ddf(theta, shape)
    assert ddf[0, :, 0, 0, 0].abs().max() == 0
    torch.testing.assert_close(ddf[0, :, 3, 4, 5], torch.tensor([3.0, 4.0, 5.0], dtype=D))


def rotation_theta(shape, degrees, scale, shift):
    """3x4 voxel-index affine: rotation about Z and scaling about the volume centre, then a shift (float64 numpy)."""
    c = (np.array(shape, dtype=np.float64) - 1) / 2
    a = math.radians(degrees)
    r = scale * np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    m = np.eye(4)
    m[:3, :3] = r
    m[:3, 3] = c - r @ c + np.asarray(shift)
    return m


def test_affine_round_trip_is_identity_on_the_interior():
    shape = (14, 15, 16)
    a = rotation_theta(shape, 6.0, 1.04, (0.6, -0.4, 0.3))
    a_inv = np.linalg.inv(a)
    theta = torch.tensor(a[None, :3], dtype=D)
    theta_inv = torch.tensor(a_inv[None, :3], dtype=D)
    x, y, z = identity_grid(shape, dtype=D)[0]
    linear = (1 + 0.5 * x - 0.3 * y + 0.2 * z)[None, None]
    blob = torch.exp(-((x - 7) ** 2 + (y - 7.5) ** 2 + (z - 7) ** 2) / (2 * 4.0**2))[None, None]
    moving = torch.cat([linear, blob], dim=1)
    once = warp(moving, affine_to_ddf(theta, shape))
    back = warp(once, affine_to_ddf(theta_inv, shape))

    # The interior: p whose pre-image q = A^-1 p is inside the grid, with all 8 corners of q's cell mapped inside.
    n = np.array(shape) - 1
    p = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).reshape(-1, 3).astype(float)
    q = p @ a_inv[:3, :3].T + a_inv[:3, 3]
    ok = ((q >= 0) & (q <= n)).all(1)
    for corner in itertools.product((0, 1), repeat=3):
        c = np.clip(np.floor(q) + corner, 0, n)
        ac = c @ a[:3, :3].T + a[:3, 3]
        ok &= ((ac >= 0) & (ac <= n)).all(1)
    mask = torch.from_numpy(ok.reshape(shape))
    assert 0.3 < mask.double().mean() < 0.95
    torch.testing.assert_close(back[0, 0][mask], linear[0, 0][mask], atol=1e-9, rtol=0)  # trilinear: exact
    assert (back[0, 1][mask] - blob[0, 0][mask]).abs().max() < 0.05  # 2 x 3 axes x h^2/8 x max f'' = 0.047


def nifti_pair():
    fixed = np.diag([2.0, 2.0, 2.0, 1.0])
    fixed[:3, 3] = -15.0  # 16^3 voxels of 2 mm covering [-15, 15] mm
    moving = np.zeros((4, 4))  # 20 x 22 x 26 voxels, x flipped, voxel axes 1 and 2 along world z and y
    moving[:3, 0] = (-1.5, 0, 0)
    moving[:3, 1] = (0, 0, 1.25)
    moving[:3, 2] = (0, 1.5, 0)
    moving[:, 3] = (14.25, -15.75, -15.625, 1.0)
    return fixed, (16, 16, 16), moving, (20, 26, 22)


def world_points(affine, shape):
    grid = identity_grid(shape, dtype=D)[0].reshape(3, -1).numpy()
    return (affine[:3, :3] @ grid + affine[:3, 3:]).reshape(3, *shape)


def test_voxel_to_voxel_maps_grids_of_different_shape_and_spacing_in_world_coordinates():
    fixed_aff, fixed_shape, moving_aff, moving_shape = nifti_pair()
    img = nib.Nifti1Image(np.zeros(moving_shape, np.float32), moving_aff)
    np.testing.assert_allclose(world_affine(img), moving_aff)
    np.testing.assert_allclose(world_affine(img.header), moving_aff)
    np.testing.assert_allclose(voxel_spacing(moving_aff), [1.5, 1.25, 1.5])
    f2m = voxel_to_voxel(fixed_aff, img)
    np.testing.assert_allclose(f2m, np.linalg.inv(moving_aff) @ fixed_aff, atol=1e-12)

    wm, wf = world_points(moving_aff, moving_shape), world_points(fixed_aff, fixed_shape)
    # 1) an intensity linear in world coordinates is reproduced exactly where the fixed voxel is inside the moving grid
    f = lambda w: 1 + 0.1 * w[0] - 0.05 * w[1] + 0.02 * w[2]  # noqa: E731
    out = warp(torch.from_numpy(f(wm))[None, None], zero_ddf(fixed_shape), fixed_to_moving=f2m)[0, 0].numpy()
    q = np.einsum("ij,j...->i...", f2m[:3, :3], world_points(np.eye(4), fixed_shape)) + f2m[:3, 3, None, None, None]
    inside = ((q >= 0) & (q <= np.array(moving_shape)[:, None, None, None] - 1)).all(0)
    assert inside.mean() > 0.7
    np.testing.assert_allclose(out[inside], f(wf)[inside], atol=1e-10)

    # 2) a bright cube lands at the same world position
    lo, hi = np.array([-6.0, -3.0, -1.0]), np.array([2.0, 5.0, 7.0])
    in_box = lambda w, m: ((w >= lo[:, None, None, None] + m) & (w <= hi[:, None, None, None] - m)).all(0)  # noqa: E731
    moving = torch.from_numpy(in_box(wm, 0.0).astype(np.float64))[None, None]
    out = warp(moving, zero_ddf(fixed_shape), fixed_to_moving=f2m)[0, 0].numpy()
    np.testing.assert_allclose(out[in_box(wf, 1.6)], 1.0, atol=1e-12)
    assert (out[~in_box(wf, -1.6)] == 0).all()
    centre_fixed = (wf * out).reshape(3, -1).sum(1) / out.sum()
    centre_moving = (wm * moving[0, 0].numpy()).reshape(3, -1).sum(1) / moving.sum().item()
    np.testing.assert_allclose(centre_fixed, (lo + hi) / 2, atol=0.75)
    np.testing.assert_allclose(centre_moving, (lo + hi) / 2, atol=0.75)


def test_default_mapping_of_another_shape_is_the_corner_aligned_resize():
    moving = rand_volume((9, 6, 11), channels=2)
    fixed_shape = (5, 8, 11)
    out = warp(moving, zero_ddf(fixed_shape))
    torch.testing.assert_close(out, resize_volume(moving, fixed_shape), atol=1e-12, rtol=0)
    torch.testing.assert_close(out[..., 0, 0, 0], moving[..., 0, 0, 0])
    torch.testing.assert_close(out[..., -1, -1, -1], moving[..., -1, -1, -1])
    nearest = warp(moving, zero_ddf(fixed_shape), mode="nearest")
    torch.testing.assert_close(nearest, resize_volume(moving, fixed_shape, mode="nearest"), atol=0, rtol=0)
    explicit = warp(moving, zero_ddf(fixed_shape), fixed_to_moving=np.diag([8 / 4, 5 / 7, 1.0, 1.0]))
    torch.testing.assert_close(explicit, out, atol=1e-12, rtol=0)
    assert resize_volume(moving, (9, 6, 11)) is moving


def test_one_voxel_axes_keep_the_zero_boundary():
    moving = torch.ones(1, 1, 4, 4, 1, dtype=D)
    ddf = zero_ddf((4, 4, 1))
    torch.testing.assert_close(warp(moving, ddf), moving)
    ddf[:, 2] = 0.25
    torch.testing.assert_close(warp(moving, ddf), 0.75 * moving)
    assert warp(moving, ddf, padding="border").min() == 1.0
    ddf[:, 2] = 0.75
    assert warp(moving, ddf, mode="nearest").max() == 0


def test_warp_broadcasts_a_batch_of_one_and_passes_gradients():
    moving = rand_volume((4, 5, 4)).requires_grad_()
    g = torch.Generator().manual_seed(1)
    ddf = (0.3 * torch.randn(3, 3, 4, 5, 4, generator=g, dtype=D) + 0.13).requires_grad_()
    out = warp(moving, ddf)
    assert out.shape == (3, 1, 4, 5, 4)
    out.pow(2).sum().backward()
    assert torch.isfinite(ddf.grad).all() and ddf.grad.abs().sum() > 0
    assert moving.grad.abs().sum() > 0
    assert torch.autograd.gradcheck(lambda m, d: warp(m, d, padding="border"),
                                    (moving.detach()[:, :, :3, :3, :3].requires_grad_(),
                                     ddf.detach()[:1, :, :3, :3, :3].requires_grad_()))


def test_warp_and_affine_errors_are_clear():
    moving, ddf = rand_volume((4, 4, 4)), zero_ddf((4, 4, 4))
    with pytest.raises(ValueError, match="B, 3, X, Y, Z"):
        warp(moving, ddf[:, :2])
    with pytest.raises(ValueError, match="5-D"):
        warp(moving[0], ddf)
    with pytest.raises(ValueError, match="floating"):
        warp(moving.long(), ddf)
    with pytest.raises(ValueError, match="mode"):
        warp(moving, ddf, mode="cubic")
    with pytest.raises(ValueError, match="padding"):
        warp(moving, ddf, padding="reflection")
    with pytest.raises(ValueError, match="batch"):
        warp(moving.expand(2, -1, -1, -1, -1), ddf.expand(3, -1, -1, -1, -1))
    with pytest.raises(ValueError, match="4x4"):
        warp(moving, ddf, fixed_to_moving=np.eye(3))
    with pytest.raises(ValueError, match="last row"):
        warp(moving, ddf, fixed_to_moving=np.ones((4, 4)))
    with pytest.raises(ValueError, match="singular"):
        world_affine(np.diag([1.0, 0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="NaN"):
        voxel_to_voxel(np.full((4, 4), np.nan), np.eye(4))
    with pytest.raises(ValueError, match="3 positive ints"):
        affine_to_ddf(identity_theta(1), (4, 4))
    with pytest.raises(ValueError, match="B, 3, 4"):
        affine_to_ddf(torch.zeros(1, 4, 4), (4, 4, 4))
    with pytest.raises(ValueError, match="mode"):
        resize_volume(moving, (2, 2, 2), mode="area")


# ----------------------------------------------------------------------------------------------- regularisers
def test_affine_fields_have_zero_bending_energy():
    g = torch.Generator().manual_seed(3)
    theta = identity_theta(2, dtype=D) + 0.2 * torch.randn(2, 3, 4, generator=g, dtype=D)
    ddf = affine_to_ddf(theta, (9, 10, 11))
    assert bending_energy(ddf).item() < 1e-10
    assert bending_energy(ddf, reduction="none").shape == (2,)


def test_bending_energy_of_quadratic_and_mixed_fields():
    shape, a, b = (9, 10, 11), 0.01, 0.03
    # u_x = a x^2: u_xx = 2a on the whole (X-4, Y-4, Z-4) interior, nothing else; mean over the 3 components
    assert bending_energy(field(shape, lambda x, y, z: a * x**2, 0)).item() == pytest.approx(4 * a**2 / 3, rel=1e-12)
    # the same quadratic in every component: 4a^2 per voxel and component (the reference's 0.01 x^2 -> 4e-4)
    every = field(shape, lambda x, y, z: a * x**2, 0) + field(shape, lambda x, y, z: a * y**2, 1) \
        + field(shape, lambda x, y, z: a * z**2, 2)
    assert bending_energy(every).item() == pytest.approx(4 * a**2, rel=1e-12)
    # u_x = b x y: u_xy = b, counted twice (2 u_xy^2)
    assert bending_energy(field(shape, lambda x, y, z: b * x * y, 0)).item() == pytest.approx(2 * b**2 / 3, rel=1e-12)
    assert bending_energy(field(shape, lambda x, y, z: b * y * z, 2)).item() == pytest.approx(2 * b**2 / 3, rel=1e-12)


def test_bending_energy_interior_of_a_cubic_field():
    """u_x = a x^3: the twice-applied central difference gives exactly 6 a x, on x = 2 .. X-3 only."""
    shape, a = (9, 6, 5), 0.002
    xs = np.arange(2, shape[0] - 2)
    expected = np.mean((6 * a * xs) ** 2) / 3
    assert bending_energy(field(shape, lambda x, y, z: a * x**3, 0)).item() == pytest.approx(expected, rel=1e-12)


def test_bending_energy_of_white_noise_uses_the_wide_stencil():
    """E[energy] for i.i.d. N(0,1): 3 * 6/16 + 6 * 4/16 = 2.625 (label-reg, monai<=1.5.2); monai 1.6's compact
    stencil would give 19.5."""
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(1, 3, 24, 24, 24, generator=g, dtype=D)
    assert bending_energy(noise).item() == pytest.approx(2.625, rel=0.05)


def test_gradient_norms_of_linear_fields():
    shape, s = (5, 6, 7), -0.3
    scaling = field(shape, lambda x, y, z: s * x, 0) + field(shape, lambda x, y, z: s * y, 1) \
        + field(shape, lambda x, y, z: s * z, 2)
    assert gradient_l2(scaling).item() == pytest.approx(s**2, rel=1e-12)
    assert gradient_l1(scaling).item() == pytest.approx(abs(s), rel=1e-12)
    assert gradient_l2(field(shape, lambda x, y, z: s * y, 0)).item() == pytest.approx(s**2 / 3, rel=1e-12)
    assert gradient_l2(zero_ddf(shape) + 4.0).item() == 0


def test_regulariser_gradients_and_errors():
    g = torch.Generator().manual_seed(2)
    ddf = torch.randn(1, 3, 6, 6, 6, generator=g, dtype=D, requires_grad=True)
    (bending_energy(ddf) + gradient_l2(ddf)).backward()
    assert ddf.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="at least 5 voxels"):
        bending_energy(torch.zeros(1, 3, 4, 6, 6))
    with pytest.raises(ValueError, match="B, 3, X, Y, Z"):
        gradient_l2(torch.zeros(1, 2, 6, 6, 6))
    with pytest.raises(ValueError, match="reduction"):
        gradient_l1(torch.zeros(1, 3, 6, 6, 6), reduction="sum")


# -------------------------------------------------------------------------------------------- label similarity
def test_gaussian_kernel_taps():
    assert gaussian_kernel1d(0).tolist() == [1.0]
    assert gaussian_kernel1d(0.3).numel() == 1  # floor(0.9) = 0 taps each side
    k = gaussian_kernel1d(0.5)  # floor(1.5) = 1
    e = math.exp(-2.0)
    np.testing.assert_allclose(k.numpy(), np.array([e, 1.0, e]) / (1 + 2 * e))
    assert gaussian_kernel1d(2).numel() == 13 and gaussian_kernel1d(2).sum().item() == pytest.approx(1.0)


def test_gaussian_smoothing_matches_scipy_and_keeps_the_sum():
    x = rand_volume((12, 10, 11), channels=2)
    assert gaussian_smooth(x, 0) is x
    for sigma in (1, 2, 16):  # integer sigma: scipy's radius int(3 sigma + 0.5) = floor(3 sigma)
        expected = np.stack([ndi.gaussian_filter(x[0, c].numpy(), sigma, mode="constant", truncate=3.0)
                             for c in range(2)])
        np.testing.assert_allclose(gaussian_smooth(x, sigma)[0].numpy(), expected, atol=1e-12)
    point = torch.zeros(1, 1, 24, 24, 24, dtype=D)
    point[0, 0, 12, 11, 12] = 1.0
    for sigma in (0.5, 1.5, 3):
        assert gaussian_smooth(point, sigma).sum().item() == pytest.approx(1.0, abs=1e-12)
    assert gaussian_smooth(point, 8).sum().item() < 0.99  # mass lost through the zero border
    with pytest.raises(ValueError, match="sigma"):
        gaussian_smooth(point, -1)


def test_soft_dice_of_identical_and_disjoint_masks():
    a, b = cube((12, 12, 12), (1, 1, 1), 4), cube((12, 12, 12), (7, 7, 7), 4)
    assert soft_dice(a, a).item() == pytest.approx(1.0, abs=1e-8)
    assert soft_dice(a, b).item() == 0
    assert multiscale_dice_loss(a, a, sigmas=(0,)).item() == pytest.approx(0.0, abs=1e-8)
    assert multiscale_dice_loss(a, b, sigmas=(0,)).item() == 1.0


def test_multiscale_dice_prefers_overlap_and_keeps_gradients_for_disjoint_labels():
    fixed = cube((16, 16, 16), (5, 5, 5), 5)
    overlapping, disjoint = cube((16, 16, 16), (6, 5, 5), 5), cube((16, 16, 16), (11, 11, 11), 5)
    near = multiscale_dice_loss(overlapping, fixed)
    far = multiscale_dice_loss(disjoint, fixed)
    assert near.item() < far.item() < 1.0
    pred = disjoint.clone().requires_grad_()
    multiscale_dice_loss(pred, fixed).backward()
    assert pred.grad.abs().sum() > 0
    assert multiscale_dice_loss(pred.detach(), fixed, sigmas=(0,)).item() == 1.0  # no signal without smoothing
    batch = multiscale_dice_loss(torch.cat([overlapping, disjoint]), torch.cat([fixed, fixed]), reduction="none")
    torch.testing.assert_close(batch, torch.stack([near, far]))
    # the per-sample value is the mean over sigma of 1 - Dice of the smoothed labels
    by_hand = np.mean([1 - soft_dice(gaussian_smooth(overlapping, s), gaussian_smooth(fixed, s)).item()
                       for s in (0, 1, 2, 4, 8, 16)])
    assert near.item() == pytest.approx(by_hand, rel=1e-12)


def test_label_cross_entropy_hand_values():
    t = torch.zeros(1, 1, 5, 5, 5, dtype=D)
    t[..., :2, :, :] = 1.0  # 2/5 foreground
    p = torch.full_like(t, 0.8)
    expected = -(0.4 * math.log(0.8) + 0.6 * math.log(0.2))
    assert label_cross_entropy(p, t, sigmas=(0,)).item() == pytest.approx(expected, rel=1e-12)
    expected_w = -(3.0 * 0.4 * math.log(0.8) + 0.6 * math.log(0.2))
    assert label_cross_entropy(p, t, sigmas=(0,), pos_weight=3.0).item() == pytest.approx(expected_w, rel=1e-12)
    clipped = label_cross_entropy(torch.zeros_like(t), t, sigmas=(0,)).item()  # p clipped to 1e-6 on foreground
    assert clipped == pytest.approx(-(0.4 * math.log(1e-6) + 0.6 * math.log(1 - 1e-6)), rel=1e-12)
    assert math.isfinite(label_cross_entropy(torch.zeros_like(t), t).item())


def test_label_loss_errors():
    a = torch.zeros(1, 1, 6, 6, 6)
    with pytest.raises(ValueError, match="same shape"):
        multiscale_dice_loss(a, torch.zeros(1, 1, 6, 6, 5))
    with pytest.raises(ValueError, match="sigmas must not be empty"):
        multiscale_dice_loss(a, a, sigmas=())
    with pytest.raises(ValueError, match="floating"):
        label_cross_entropy(a.long(), a)


# -------------------------------------------------------------------------------------------------- evaluation
def test_binary_dice_and_centroid_distance_of_shifted_cubes():
    a = cube((12, 12, 12), (2, 2, 2), 4)
    b = cube((12, 12, 12), (3, 2, 2), 4)  # shifted by one voxel along X: overlap 3*4*4 of 64
    assert binary_dice(a, b) == pytest.approx(0.75)
    assert binary_dice(a, a) == 1.0
    np.testing.assert_allclose(centroid(a), [3.5, 3.5, 3.5])
    c = cube((12, 12, 12), (3, 4, 2), 4)  # shifted by (1, 2, 0) voxels
    assert centroid_distance_mm(a, c) == pytest.approx(math.sqrt(5))
    assert centroid_distance_mm(a, c, spacing=(0.5, 2.0, 1.0)) == pytest.approx(math.sqrt(0.25 + 16))
    numpy_distance = centroid_distance_mm(a[0, 0].numpy(), c[0, 0].numpy() * 0.6, spacing=1.5)
    assert numpy_distance == pytest.approx(1.5 * math.sqrt(5))
    assert centroid_distance_mm(a, c * 0.4) is None  # below the 0.5 threshold: empty


def test_empty_labels_give_none_never_nan():
    empty, a = torch.zeros(1, 1, 8, 8, 8), cube((8, 8, 8), (1, 1, 1), 3)
    assert centroid(empty) is None
    assert centroid_distance_mm(empty, a) is None and centroid_distance_mm(a, empty, spacing=0.8) is None
    assert binary_dice(empty, empty) is None
    assert binary_dice(empty, a) == 0.0
    with pytest.raises(ValueError, match="one 3-D label volume"):
        centroid(torch.zeros(2, 1, 8, 8, 8))
    with pytest.raises(ValueError, match="spacing"):
        centroid_distance_mm(a, a, spacing=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="same grid"):
        centroid_distance_mm(a, torch.zeros(8, 8, 7))
    with pytest.raises(ValueError, match="NaN"):
        binary_dice(torch.full((4, 4, 4), float("nan")), a[0, 0, :4, :4, :4])
