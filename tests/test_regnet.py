"""Registration networks (label-reg LocalNet / GlobalNet / CompositeNet): shapes at odd sizes, exact identity
start, gradients, parameter count at the reference widths, TF-SAME geometry, BN modes, conventions, errors."""

import math

import pytest
import torch
import torch.nn.functional as F

from leancnn.errors import LeancnnError
from leancnn.models.regnet import (
    IDENTITY_THETA,
    BatchNormBeta3d,
    CompositeNet,
    DdfSummand,
    GlobalNet,
    LocalNet,
    UpBlock,
    build_regnet,
    count_params,
    param_breakdown,
)
from leancnn.nn.warp import affine_to_ddf as _affine_ddf  # the networks use these
from leancnn.nn.warp import identity_grid
from leancnn.nn.warp import warp as _warp

TINY = (2, 4, 4, 8)  # 4 levels, bottom 8: up blocks 8->8, 8->4, 4->4, 4->2 (channel groups 1 or 2)


def _pair(shape, batch=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 1, *shape, generator=g), torch.rand(batch, 1, *shape, generator=g)


def _randomise_zero_heads(net):
    """Give the zero-initialised summands / affine head small random weights (else nothing upstream gets a
    non-zero gradient at the very first step)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, DdfSummand):
                m.conv.weight.copy_(0.01 * torch.randn(m.conv.weight.shape, generator=g))
            if isinstance(m, GlobalNet):
                m.head.weight.copy_(1e-3 * torch.randn(m.head.weight.shape, generator=g))


# ------------------------------------------------------------------------------------------------ shapes
@pytest.mark.parametrize("shape,batch", [((21, 27, 19), 2), ((47, 63, 44), 1)])
def test_ddf_has_the_fixed_shape_at_odd_sizes(shape, batch):
    torch.manual_seed(0)
    moving, fixed = _pair(shape, batch)
    nets = [LocalNet(channels=TINY, bottom=8), GlobalNet(channels=TINY, bottom=8, image_size=shape),
            CompositeNet(local_channels=TINY, global_channels=TINY, image_size=shape, local_bottom=8,
                         global_bottom=8)]
    for net in nets:
        with torch.no_grad():
            out = net(moving, fixed)
        assert out["ddf"].shape == (batch, 3, *shape), type(net).__name__
        if "theta" in out:
            assert out["theta"].shape == (batch, 3, 4)


def test_sizes_through_the_encoder_are_ceil_halves():
    """The label-reg demo grid 47×63×44 → 24×32×22 → 12×16×11 → 6×8×6 → 3×4×3 (TF SAME pooling)."""
    net = LocalNet(channels=(2, 2, 2, 2), bottom=2)
    bottom, skips = net.encoder(torch.rand(1, 2, 47, 63, 44))
    assert [tuple(s.shape[2:]) for s in skips] == [(47, 63, 44), (24, 32, 22), (12, 16, 11), (6, 8, 6)]
    assert tuple(bottom.shape[2:]) == (3, 4, 3)


@pytest.mark.parametrize("n,s", [(3, 6), (3, 5), (4, 7), (1, 1), (1, 2)])
def test_transposed_conv_is_the_adjoint_of_tf_same_conv(n, s):
    """TF ``conv3d_transpose(SAME, stride 2)`` to size s is the adjoint of the SAME stride-2 conv from s to n,
    whose padding is max(2(n-1) + 3 - s, 0), the smaller half in front."""
    torch.manual_seed(0)
    up = UpBlock(4, 2)
    x = torch.randn(1, 4, n, n + 1, n)
    size = (s, 2 * (n + 1) - 1, s)  # mixed even / odd per axis
    y = torch.randn(1, 2, *size)
    pads = []
    for m, t in zip(reversed(x.shape[2:]), reversed(size)):  # F.pad takes the last axis first
        total = max(2 * (m - 1) + 3 - t, 0)
        pads += [total // 2, total - total // 2]
    conv_y = F.conv3d(F.pad(y, pads), up.deconv.weight, stride=2)
    assert conv_y.shape == x.shape
    lhs = (conv_y * x).sum()
    rhs = (up._deconv_same(x, size) * y).sum()
    torch.testing.assert_close(lhs, rhs, rtol=1e-5, atol=1e-5)


# -------------------------------------------------------------------------------------------- identity start
def test_networks_start_at_exactly_zero_displacement_and_identity_theta():
    shape = (21, 27, 19)
    moving, fixed = _pair(shape, batch=2)
    zero = torch.zeros(2, 3, *shape)
    with torch.no_grad():
        local = LocalNet(channels=TINY, bottom=8)(moving, fixed)
        glob = GlobalNet(channels=TINY, bottom=8, image_size=shape)(moving, fixed)
        comp = CompositeNet(TINY, TINY, image_size=shape, local_bottom=8, global_bottom=8)(moving, fixed)
    identity = torch.tensor(IDENTITY_THETA).view(1, 3, 4).expand(2, 3, 4)
    assert torch.equal(local["ddf"], zero)
    assert torch.equal(glob["theta"], identity)
    assert torch.equal(glob["ddf"], zero)
    assert torch.equal(comp["theta"], identity)
    assert torch.equal(comp["ddf"], zero)
    assert torch.equal(comp["ddf_local"], zero)


def test_ddf_is_the_sum_of_the_summands_not_the_mean():
    net = LocalNet(channels=TINY, bottom=8)
    with torch.no_grad():
        for lv, summand in net.summands.items():
            summand.conv.bias.copy_(torch.tensor([1.0, 2.0, 3.0]) * (int(lv) + 1))
        ddf = net(*_pair((9, 10, 11)))["ddf"]
    # 1 + 2 + 3 + 4 + 5 = 15 per unit of bias; a constant stays constant under the trilinear resize
    expected = torch.tensor([15.0, 30.0, 45.0]).view(1, 3, 1, 1, 1).expand_as(ddf)
    torch.testing.assert_close(ddf, expected)


def test_ddf_levels_subset_builds_only_the_needed_up_blocks():
    net = LocalNet(channels=TINY, bottom=8, ddf_levels=(2, 4))
    assert len(net.decoder) == 2 and sorted(net.summands) == ["2", "4"]
    assert net(*_pair((13, 11, 9)))["ddf"].shape == (1, 3, 13, 11, 9)
    assert len(LocalNet(channels=TINY, bottom=8, ddf_levels=(4,)).decoder) == 0
    assert CompositeNet(TINY, TINY, image_size=(8, 8, 8)).local_net.ddf_levels == (0,)


# ------------------------------------------------------------------------------------------------ gradients
@pytest.mark.parametrize("kind", ["local", "global", "composite"])
def test_gradients_reach_every_parameter(kind):
    shape = (13, 15, 11)
    torch.manual_seed(0)
    net = build_regnet(kind, channels=TINY, image_size=shape, bottom=8) if kind != "composite" else \
        build_regnet(kind, channels=TINY, image_size=shape, global_channels=TINY, local_bottom=8, global_bottom=8)
    moving, fixed = _pair(shape, batch=2)
    target = torch.randn(2, 3, *shape)

    # at the exact identity start every parameter gets a gradient tensor; the zero-initialised heads get a
    # non-zero one (upstream gradients are exactly zero there because the head weights are zero)
    ((net(moving, fixed)["ddf"] - target) ** 2).mean().backward()
    assert all(p.grad is not None for p in net.parameters())
    heads = [p for n, p in net.named_parameters() if "summands" in n or "head" in n]
    assert heads and all(p.grad.abs().sum() > 0 for p in heads)

    # once the heads are non-zero (after the first steps), every parameter gets a non-zero gradient
    net.zero_grad(set_to_none=True)
    _randomise_zero_heads(net)
    ((net(moving, fixed)["ddf"] - target) ** 2).mean().backward()
    dead = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert dead == []


# ------------------------------------------------------------------------------------------ parameter count
def test_parameter_count_at_the_reference_widths():
    with torch.device("meta"):
        net = LocalNet()  # channels (32, 64, 128, 256), bottom 512, ddf_levels 0..4
    assert net.ddf_levels == (0, 1, 2, 3, 4) and net.bottom_channels == 512
    total, without_bn = count_params(net), count_params(net, bn=False)
    parts = param_breakdown(net, bn=False)
    print(f"LocalNet reference widths: {without_bn:,} parameters without BN betas ({total:,} with); {parts}")
    assert 18e6 <= without_bn <= 20e6 and without_bn == 18_902_959  # the reference's ≈18.9 M
    assert total - without_bn == 3 * (32 + 64 + 128 + 256) * 2 + 512  # 3 BNs per down/up block + bottom
    assert parts == {"encoder": 5_883_328, "bottom": 3_538_944, "decoder": 9_400_320, "summands": 80_367}
    assert sum(parts.values()) == without_bn


# --------------------------------------------------------------------------------------------------- BN
def test_batch_mode_uses_batch_statistics_in_train_and_eval():
    torch.manual_seed(0)
    net = LocalNet(channels=TINY, bottom=8)
    _randomise_zero_heads(net)
    pair = _pair((12, 10, 9), batch=2)
    with torch.no_grad():
        train_out = net.train()(*pair)["ddf"]
        eval_out = net.eval()(*pair)["ddf"]
    torch.testing.assert_close(train_out, eval_out, rtol=0, atol=0)
    assert not list(net.buffers())


def test_running_mode_is_pytorch_batchnorm():
    bn = BatchNormBeta3d(3, mode="running")
    x = 2.0 + 3.0 * torch.randn(4, 3, 5, 5, 5)
    y = bn.train()(x)
    torch.testing.assert_close(y.mean(dim=(0, 2, 3, 4)), torch.zeros(3), atol=1e-5, rtol=0)
    assert (bn.running_mean > 0.1).all()
    y_eval = bn.eval()(x)  # running statistics: barely normalised after one step (momentum 0.1)
    assert not torch.allclose(y_eval, y, atol=0.1)
    with pytest.raises(LeancnnError, match="bn_mode"):
        BatchNormBeta3d(3, mode="frozen")


def test_single_value_per_channel_normalises_to_zero_like_tf():
    bn = BatchNormBeta3d(2)
    with torch.no_grad():
        bn.beta.fill_(0.5)
    assert torch.equal(bn(torch.randn(1, 2, 1, 1, 1)), torch.full((1, 2, 1, 1, 1), 0.5))


# ---------------------------------------------------------------------------------------- warp and affine
def test_affine_ddf_acts_on_voxel_indices_from_the_origin_voxel():
    theta = torch.tensor([[2.0, 0, 0, 1.0], [0, 1.0, 0, -2.0], [0, 0, 1.0, 0.5]]).unsqueeze(0)
    ddf = _affine_ddf(theta, (4, 5, 6))
    x = torch.arange(4.0).view(4, 1, 1)
    torch.testing.assert_close(ddf[0, 0], (x + 1.0).expand(4, 5, 6))  # 2x + 1 - x
    torch.testing.assert_close(ddf[0, 1], torch.full((4, 5, 6), -2.0))
    torch.testing.assert_close(ddf[0, 2], torch.full((4, 5, 6), 0.5))


def test_warp_samples_the_moving_image_at_p_plus_ddf():
    image = torch.rand(2, 1, 7, 8, 9)
    torch.testing.assert_close(_warp(image, torch.zeros(2, 3, 7, 8, 9)), image)
    ddf = torch.zeros(2, 3, 7, 8, 9)
    ddf[:, 0], ddf[:, 1], ddf[:, 2] = 1.0, -2.0, 0.5
    warped = _warp(image, ddf)
    expected = 0.5 * (image[:, :, 1:, :-2, :-1] + image[:, :, 1:, :-2, 1:])
    torch.testing.assert_close(warped[:, :, :-1, 2:, :-1], expected)
    assert torch.equal(warped[:, :, -1], torch.zeros_like(warped[:, :, -1]))  # outside: zeros


def test_global_net_learns_a_known_translation():
    torch.manual_seed(0)
    n = 16
    ax = torch.arange(n, dtype=torch.float32)
    grid = torch.stack(torch.meshgrid(ax, ax, ax, indexing="ij"))

    def blob(centre):
        return torch.exp(-((grid - centre.view(3, 1, 1, 1)) ** 2).sum(0) / (2 * 2.5**2))[None, None]

    centre, shift = torch.tensor([7.0, 8.0, 7.0]), torch.tensor([2.0, -1.5, 1.0])
    fixed, moving = blob(centre), blob(centre + shift)  # moving(p + shift) = fixed(p): the ddf is +shift
    net = GlobalNet(channels=(4, 8, 16), image_size=(n, n, n))  # bottom 2³ (batch-1 BN needs > 1 voxel)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    losses = []
    for _ in range(100):
        loss = ((_warp(moving, net(moving, fixed)["ddf"]) - fixed) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        ddf = net(moving, fixed)["ddf"][0, :, 7, 8, 7]
    assert losses[-1] < losses[0] / 100
    torch.testing.assert_close(ddf, shift, atol=0.25, rtol=0)


# ------------------------------------------------------------------------------------------------- errors
def test_clear_errors():
    with pytest.raises(LeancnnError, match="unknown registration network kind"):
        build_regnet("deformable")
    with pytest.raises(LeancnnError, match="does not take"):
        build_regnet("local", channels=TINY, depth=3)
    with pytest.raises(LeancnnError, match="image_size"):
        build_regnet("global")
    with pytest.raises(LeancnnError, match="ddf_levels"):
        LocalNet(channels=TINY, ddf_levels=(0, 5))
    with pytest.raises(LeancnnError, match="multiple of the output channels"):
        LocalNet(channels=(4, 6), bottom=8)
    with pytest.raises(LeancnnError, match="bn_mode"):
        LocalNet(channels=TINY, bn_mode="frozen")
    with pytest.raises(LeancnnError, match="channels"):
        LocalNet(channels=())
    net = LocalNet(channels=TINY, bottom=8)
    with pytest.raises(LeancnnError, match="same batch and spatial size"):
        net(torch.rand(1, 1, 8, 8, 8), torch.rand(1, 1, 8, 8, 9))
    with pytest.raises(LeancnnError, match="in_channels=2"):
        net(torch.rand(1, 2, 8, 8, 8), torch.rand(1, 1, 8, 8, 8))
    with pytest.raises(LeancnnError, match=r"\(B, C, X, Y, Z\)"):
        net(torch.rand(1, 8, 8, 8), torch.rand(1, 8, 8, 8))
    with pytest.raises(LeancnnError, match="built for image_size"):
        GlobalNet(channels=TINY, image_size=(8, 8, 8))(*_pair((8, 8, 9)))
    assert GlobalNet(channels=TINY, head="avgpool")(*_pair((8, 8, 9)))["theta"].shape == (1, 3, 4)
    assert math.prod(GlobalNet(channels=TINY, image_size=(47, 63, 44)).bottom_size) == 3 * 4 * 3


def test_composite_true_composition_samples_the_affine_image_of_the_local_point():
    """compose="warp": ddf(q) = theta @ [q + d_l(q); 1] - q exactly (the moving image sampled at the affine image
    of the locally displaced point); compose="sum" (label-reg) adds the two fields. They differ by (A - I) d_l."""
    shape = (9, 10, 8)
    moving, fixed = _pair(shape)
    nets = {c: CompositeNet(TINY, TINY, image_size=shape, local_bottom=8, global_bottom=8, compose=c)
            for c in ("sum", "warp")}
    nets["warp"].load_state_dict(nets["sum"].state_dict())
    theta = torch.tensor([[1.1, 0.05, 0.0, 0.5], [0.0, 0.9, 0.1, -1.0], [0.02, 0.0, 1.05, 0.3]])
    with torch.no_grad():
        for net in nets.values():
            net.global_net.head.bias.copy_(theta.flatten())
            net.local_net.summands["0"].conv.bias.copy_(torch.tensor([0.7, -0.4, 0.2]))
        out = {c: net(moving, fixed) for c, net in nets.items()}
    q = identity_grid(shape)
    local = out["warp"]["ddf_local"]
    moved = torch.einsum("ij,bjxyz->bixyz", theta[:, :3], q + local) + theta[:, 3].view(1, 3, 1, 1, 1)
    torch.testing.assert_close(out["warp"]["ddf"], moved - q, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["sum"]["ddf"], out["sum"]["ddf_affine"] + out["sum"]["ddf_local"])
    diff = out["warp"]["ddf"] - out["sum"]["ddf"]
    expected = torch.einsum("ij,bjxyz->bixyz", theta[:, :3] - torch.eye(3), local)
    torch.testing.assert_close(diff, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(LeancnnError, match="compose"):
        CompositeNet(TINY, TINY, image_size=shape, compose="chain")
