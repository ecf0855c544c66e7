"""MixStyle: the mathematics, the reference's pitfalls, the control API and insertion into our backbones."""

from __future__ import annotations

import pytest
import torch

from leancnn.models import create_model
from leancnn.nn.mixstyle import (
    MixStyle,
    activate_mixstyle,
    deactivate_mixstyle,
    insert_mixstyle,
    mixstyle_modules,
    set_mixstyle_mode,
    with_mixstyle,
    without_mixstyle,
)


def always(mix="random", seed=0, **kw):
    return MixStyle(p=1.0, alpha=0.3, mix=mix, generator=torch.Generator().manual_seed(seed), **kw)


def test_output_statistics_are_the_mixed_statistics():
    x = torch.randn(8, 4, 6, 5, dtype=torch.float64) * torch.rand(8, 4, 1, 1) * 3 + torch.randn(8, 4, 1, 1)
    ms = always()
    out = ms(x.float()).double()
    d = ms.last_draw
    mu, sig = x.mean((2, 3)), (x.var((2, 3), unbiased=True) + 1e-6).sqrt()
    lam = d["lam"].double().view(8, 1)
    torch.testing.assert_close(out.mean((2, 3)), lam * mu + (1 - lam) * mu[d["perm"]], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.std((2, 3), unbiased=True), lam * sig + (1 - lam) * sig[d["perm"]],
                               rtol=1e-3, atol=1e-3)
    assert (out - x).abs().max() > 0.1  # styles really changed (seeded: the same draw every run)


def test_identity_in_eval_when_deactivated_and_p_zero():
    x = torch.randn(6, 3, 4, 4)
    ms = always()
    ms.eval()
    assert ms(x) is x
    ms.train()
    ms.active = False
    assert ms(x) is x
    assert MixStyle(p=0.0)(x) is x
    one = x[:1]
    assert always()(one) is one  # batch of one: no partner


@pytest.mark.parametrize("batch", [2, 3, 7, 8, 33])
def test_crossdomain_partners_come_from_the_other_half(batch):
    ms = always("crossdomain")
    half = batch // 2
    for _ in range(50):
        perm = ms.partners(batch)
        assert (perm[:half] >= half).all() and (perm[half:] < half).all()
    assert sorted(ms.partners(8)[:4].tolist()) == [4, 5, 6, 7]  # even batch: a permutation of the other half


def test_gradient_does_not_flow_through_the_statistics():
    x = torch.randn(4, 3, 5, 5, requires_grad=True)
    ms = always()
    ms(x).sum().backward()
    d = ms.last_draw
    torch.testing.assert_close(x.grad, (d["sig_mix"] / d["sig"]).expand_as(x))


def test_one_by_one_maps_dtypes_and_memory_format():
    ms = always()
    out = ms(torch.randn(5, 8, 1, 1))
    assert torch.isfinite(out).all()
    for dtype in (torch.float16, torch.bfloat16):
        x = torch.randn(4, 3, 6, 6).to(dtype)
        y = always()(x)
        assert y.dtype == dtype and torch.isfinite(y.float()).all()
    x = torch.randn(4, 8, 6, 6).contiguous(memory_format=torch.channels_last)
    y = always()(x)
    assert y.is_contiguous(memory_format=torch.channels_last)


def test_seeded_generator_reproduces():
    x = torch.randn(6, 3, 4, 4)
    assert torch.equal(always(seed=5)(x), always(seed=5)(x))
    assert not torch.equal(always(seed=5)(x), always(seed=6)(x))


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown mix mode 'styles'; choose from: random, crossdomain"):
        MixStyle(mix="styles")
    with pytest.raises(ValueError, match="p must be in \\[0, 1\\]"):
        MixStyle(p=1.5)
    with pytest.raises(ValueError, match="alpha must be > 0"):
        MixStyle(alpha=0)


def test_control_api_restores_previous_state():
    model = torch.nn.Sequential(always(), torch.nn.ReLU(), always())
    a, b = mixstyle_modules(model)
    b.active = False
    with with_mixstyle(model, mix="crossdomain"):
        assert a.active and b.active and a.mix == b.mix == "crossdomain"
    assert a.active and not b.active and a.mix == b.mix == "random"
    with without_mixstyle(model):
        assert not a.active and not b.active
    assert a.active and not b.active
    deactivate_mixstyle(model)
    assert not a.active
    activate_mixstyle(model)
    set_mixstyle_mode(model, "crossdomain")
    assert a.active and b.active and b.mix == "crossdomain"
    with pytest.raises(ValueError, match="unknown mix mode"):
        with with_mixstyle(model, mix="nope"):
            pass


@pytest.mark.parametrize("name, after", [("resnet20", ["layer1", "layer2"]), ("digits_cnn", ["conv1", "conv2"]),
                                         ("mobilenetv3_small", ["blocks.0", "blocks.1"]),
                                         ("skipnet_xs", ["blocks.1", "blocks.2"])])
def test_insert_into_backbones(name, after):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10)
    keys = set(model.state_dict())
    x = torch.randn(6, 3, 32, 32)
    model.eval()
    ref = model(x)
    inserted = insert_mixstyle(model, after, p=1.0, alpha=0.1)
    assert len(inserted) == 2 and set(model.state_dict()) == keys  # no parameters, same checkpoints
    torch.testing.assert_close(model(x), ref, rtol=1e-4, atol=1e-5 * ref.abs().max().item())  # eval: identity
    model.train()
    with without_mixstyle(model):
        plain = model(x)
    mixed = model(x)
    assert (plain - mixed).abs().max() > 1e-2 * plain.abs().max()  # train: the styles really changed
    assert all(m.training for m in inserted)


def test_insert_bad_name_lists_valid_names():
    model = create_model("resnet20")
    with pytest.raises(ValueError, match="cannot insert MixStyle after 'layer9': not a module of ResNet; "
                                         "valid names include: stem, stem.0"):
        insert_mixstyle(model, ["layer9"])


def test_a_deep_copy_mixes_with_its_own_mixstyle():
    """The insertion hook is an object, so a deep copy's hook calls the copy's MixStyle, not the original's
    (a closure would keep pointing at the original: the copy would share its switch and its random draws)."""
    import copy

    import leancnn
    from leancnn.nn.mixstyle import deactivate_mixstyle, insert_mixstyle, mixstyle_modules

    model = leancnn.create_model("resnet20").train()
    insert_mixstyle(model, ["layer1"], p=1.0)
    twin = copy.deepcopy(model)
    deactivate_mixstyle(model)  # the original stops mixing; the copy must not
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        twin(x)
    assert mixstyle_modules(twin)[0].last_draw and not mixstyle_modules(model)[0].last_draw
