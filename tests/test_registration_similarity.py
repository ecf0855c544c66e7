"""Image similarity without labels (MIND-SSC, LNCC of gradient magnitudes) and test-time refinement of a DDF
(leancnn.losses.similarity; issue 21, part 2)."""

import pytest
import torch

from leancnn.losses.similarity import lncc_gradient_loss, mind_ssc, mind_ssc_loss, refine_ddf
from leancnn.nn.warp import warp


def blob(shape=(20, 22, 18), centre=(10.0, 11.0, 9.0), radius=5.0):
    x, y, z = torch.meshgrid(*(torch.arange(n, dtype=torch.float32) for n in shape), indexing="ij")
    r = ((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2).sqrt()
    return torch.sigmoid(radius - r)[None, None]


def test_mind_descriptor_shape_range_and_modality_invariance():
    img = blob()
    d = mind_ssc(img)
    assert d.shape == (1, 12, 20, 22, 18)
    assert float(d.min()) >= 0 and torch.allclose(d.max(dim=1).values, torch.ones(1, 20, 22, 18))
    # an inverted contrast (another "modality" of the same structure) has the same self-similarity
    assert float(mind_ssc_loss(img, 1.0 - img)) < 1e-6
    assert float(mind_ssc_loss(img, img)) == 0.0
    shifted = blob(centre=(12.0, 11.0, 9.0))
    assert float(mind_ssc_loss(shifted, img)) > 1e-3


def test_lncc_of_gradient_magnitudes_is_contrast_free():
    torch.manual_seed(0)
    texture = torch.nn.functional.avg_pool3d(torch.rand(1, 1, 24, 24, 24), 3, stride=1, padding=1)
    assert float(lncc_gradient_loss(texture, texture)) < 0.02  # structure in every window: cc = 1
    assert float(lncc_gradient_loss(1.0 - texture, texture)) < 0.02  # gradient magnitudes ignore the sign
    assert float(lncc_gradient_loss(texture.roll(2, dims=2), texture)) > 0.3
    img = blob()
    assert float(lncc_gradient_loss(1.0 - img, img)) == pytest.approx(float(lncc_gradient_loss(img, img)), abs=1e-6)
    assert float(lncc_gradient_loss(blob(centre=(13.0, 11.0, 9.0)), img)) > float(lncc_gradient_loss(img, img)) + 0.05


@pytest.mark.parametrize("similarity", ["mind", "lncc_grad"])
def test_refinement_recovers_a_shift_from_the_images_alone(similarity):
    """The fixed blob is the moving blob shifted by 2 voxels along x: refinement from a zero field moves the
    field towards the true displacement (+2 voxels at the blob) and lowers the similarity loss; the input field
    is not changed."""
    torch.manual_seed(0)
    moving = 1.0 - blob(centre=(12.0, 11.0, 9.0))  # another contrast, 2 voxels further along x
    fixed = blob()
    ddf = torch.zeros(1, 3, 20, 22, 18)
    out = refine_ddf(moving, fixed, ddf, steps=100, similarity=similarity, weight=0.1, lr=0.1)
    assert torch.equal(ddf, torch.zeros_like(ddf)) and not out.requires_grad
    inside = (fixed[0, 0] > 0.5)
    shift = float(out[0, 0][inside].mean())
    assert 0.5 < shift < 3.0, shift  # measured: MIND 1.16, LNCC-grad 0.80 of the true 2 after 100 steps
    loss = mind_ssc_loss if similarity == "mind" else lncc_gradient_loss
    assert float(loss(warp(moving, out), fixed)) < float(loss(warp(moving, ddf), fixed))
    assert torch.equal(refine_ddf(moving, fixed, out, steps=0), out)


def test_bad_arguments_are_named():
    img = blob()
    ddf = torch.zeros(1, 3, 20, 22, 18)
    with pytest.raises(ValueError, match="similarity"):
        refine_ddf(img, img, ddf, 1, similarity="mi")
    with pytest.raises(ValueError, match="steps"):
        refine_ddf(img, img, ddf, -1)
    with pytest.raises(ValueError, match="share a grid"):
        refine_ddf(img, img, torch.zeros(1, 3, 8, 8, 8), 1)
    with pytest.raises(ValueError, match="one channel"):
        mind_ssc(torch.zeros(1, 2, 8, 8, 8))
    with pytest.raises(ValueError, match="window"):
        lncc_gradient_loss(img, img, window=4)
