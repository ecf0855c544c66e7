"""MoViNet stream step with an explicit state (issue 10, parts 2-3): any chunking of a clip gives the whole clip's
logits for every stream model; the state has a fixed size, is not modified in place, and a state from another
model, batch size or resolution is refused."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from helpers.movinet_weights import randomise

import leancnn
from leancnn.models.movinet import StreamingMovinet, detach_state, state_nbytes

STREAM = [f"movinet_a{i}_stream" for i in range(6)]


def randomised(name: str, seed: int = 0) -> nn.Module:
    """Random weights, non-trivial BatchNorm (statistics and affine) and non-zero ReZero / positional-encoding
    scalars, in eval mode: with ReZero at its initial 0 every residual branch would be switched off."""
    torch.manual_seed(seed)
    return randomise(leancnn.create_model(name, num_classes=10), seed)


def streamed(model, clip, sizes):
    state, start = None, 0
    for size in sizes:
        logits, state = model.stream_step(clip[:, :, start:start + size], state)
        start += size
    assert start == clip.shape[2]
    return logits, state


@pytest.mark.slow
@pytest.mark.parametrize("name", STREAM)
def test_any_chunking_gives_the_whole_clip_logits(name):
    model = randomised(name)
    clip = torch.randn(2, 3, 7, 32, 44, generator=torch.Generator().manual_seed(1))  # non-square
    with torch.no_grad():
        whole = model(clip)
        assert whole.abs().max() > 0.1  # the logits are not trivially small
        for sizes in ([1] * 7, [2, 1, 4], [7], [3, 3, 1], [1, 6]):  # chunks shorter and longer than the buffers
            logits, state = streamed(model, clip, sizes)
            assert (logits - whole).abs().max().item() <= 1e-5, sizes
            assert state["frame_count"].tolist() == [7]


def test_positional_encoding_continues_across_chunks():
    """A3's SE adds a positional encoding at the absolute frame position: restarting the positions at every
    chunk (a plausible bug) changes the logits, so the parity above really covers the encoding."""
    model = randomised("movinet_a3_stream")
    clip = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        whole = model(clip)
        _, state = model.stream_step(clip[:, :, :2])
        reset = dict(state, frame_count=torch.zeros(1, dtype=torch.int64))
        wrong, _ = model.stream_step(clip[:, :, 2:], reset)
    assert (wrong - whole).abs().max() > 1e-3


def test_state_size_is_fixed_and_matches_the_reference():
    model = leancnn.create_model("movinet_a0_stream").eval()
    state = model.init_state(1, 172, 172)
    buffers = sum(t.numel() for k, t in state.items() if k.endswith("stream_buffer"))
    assert sum(k.endswith("stream_buffer") for k in state) == 11  # A0 has 11 layers with kt > 1
    assert buffers == pytest.approx(0.67e6, rel=0.01)  # reference: 0.67M floats, 2.56 MiB
    assert state_nbytes(state) / 2**20 == pytest.approx(2.57, abs=0.01)
    with torch.no_grad():
        _, s1 = model.stream_step(torch.zeros(1, 3, 1, 172, 172), model.init_state(1, 172, 172))
        _, s9 = model.stream_step(torch.zeros(1, 3, 9, 172, 172), s1)
    assert {k: v.shape for k, v in s9.items()} == {k: v.shape for k, v in state.items()}
    assert s9["frame_count"].item() == 10 and s9["frame_count"].dtype == torch.int64


def test_the_input_state_is_not_modified_and_can_be_branched_from():
    model = randomised("movinet_a0_stream")
    clip = torch.randn(1, 3, 6, 24, 24)
    with torch.no_grad():
        _, state = model.stream_step(clip[:, :, :3])
        saved = {k: v.clone() for k, v in state.items()}
        a, _ = model.stream_step(clip[:, :, 3:], state)
        b, _ = model.stream_step(clip[:, :, 3:], state)
    assert all(torch.equal(saved[k], state[k]) for k in state)
    assert torch.equal(a, b)


def test_wrong_states_are_refused_with_a_reason():
    a0, a1 = leancnn.create_model("movinet_a0_stream"), leancnn.create_model("movinet_a1_stream")
    frames = torch.zeros(2, 3, 1, 32, 32)
    with pytest.raises(ValueError, match="state does not belong to movinet_a0_stream"):
        a0.stream_step(frames, a1.init_state(2, 32, 32))
    with pytest.raises(ValueError, match="batch size 3, frames have batch size 2"):
        a0.stream_step(frames, a0.init_state(3, 32, 32))
    with pytest.raises(ValueError, match="another resolution or model, frames are 32x32"):
        a0.stream_step(frames, a0.init_state(2, 64, 32))
    with pytest.raises(ValueError, match="state must be a dict"):
        a0.stream_step(frames, [torch.zeros(1)])
    bad = a0.init_state(2, 32, 32)
    bad["frame_count"] = bad["frame_count"].float()
    with pytest.raises(ValueError, match="integer"):
        a0.stream_step(frames, bad)
    with pytest.raises(ValueError, match="base \\(non-causal\\)"):
        leancnn.create_model("movinet_a0").stream_step(frames)
    with pytest.raises(ValueError, match="frames: expected a clip"):
        a0.stream_step(torch.zeros(2, 3, 32, 32))
    with pytest.raises(ValueError, match="frames: expected a clip"):
        a0.stream_step(torch.zeros(2, 3, 0, 32, 32))
    with pytest.raises(ValueError, match="height must be a positive int"):
        a0.init_state(1, 0, 32)


def test_the_stateful_wrapper_streams_and_resets():
    model = randomised("movinet_a0_stream")
    clip = torch.randn(1, 3, 5, 24, 32)
    with torch.no_grad():
        whole = model(clip)
    s = StreamingMovinet(model)
    for t in range(5):
        logits = s(clip[:, :, t])  # one frame [B, 3, H, W]
    assert s.frames_seen == 5 and (logits - whole).abs().max() <= 1e-5
    with pytest.raises(ValueError, match="batch size 1, frames have batch size 2"):
        s(torch.zeros(2, 3, 24, 32))
    s.reset()
    assert s.frames_seen == 0 and s(torch.zeros(2, 3, 1, 24, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="stream model"):
        StreamingMovinet(leancnn.create_model("movinet_a0"))


def test_detached_state_stops_gradients_at_the_sub_clip_boundary():
    """Sub-clip training (truncated backprop): the loss of the second sub-clip reaches its own frames only."""
    model = randomised("movinet_a0_stream").train()
    clip = torch.randn(2, 3, 4, 24, 24, requires_grad=True)
    _, state = model.stream_step(clip[:, :, :2])
    logits, _ = model.stream_step(clip[:, :, 2:], detach_state(state))
    logits.sum().backward()
    grad = clip.grad.abs().sum((0, 1, 3, 4))
    assert grad[:2].sum() == 0 and (grad[2:] > 0).all()
