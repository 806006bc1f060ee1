"""The stain prior of the ``small_cnn`` attention net: off by default, learnt, dark-seeking, tile-safe."""

from __future__ import annotations

import pytest
import torch

from wsi_ats.engine.grid import AttentionGrid
from wsi_ats.models import build


def net(seed: int = 0, **params) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build("attention", "small_cnn", channels=4, **params)


def test_no_prior_is_the_original_net_with_the_same_parameters_and_outputs():
    x = torch.randn(2, 3, 30, 40)
    original, off = net(), net(stain_prior=0.0)
    assert off.state_dict().keys() == original.state_dict().keys()  # old checkpoints load unchanged
    torch.testing.assert_close(off(x), original(x), rtol=0, atol=0)


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_the_prior_adds_gain_times_the_local_darkness_and_keeps_the_geometry(padding):
    x = torch.randn(1, 3, 30, 40)
    plain, prior = net(padding=padding), net(padding=padding, stain_prior=2.5, prior_kernel=5)
    assert (prior.radius, prior.padding, prior.receptive_field) == (plain.radius, plain.padding, plain.receptive_field)
    lost = prior.receptive_field
    out = prior(x)
    assert out.shape == (1, 30 - lost, 40 - lost)
    # By hand at an interior cell: minus the channel mean over the 5 x 5 pixels around its centre pixel.
    cy, cx = 10, 17
    py, px = (cy + prior.radius, cx + prior.radius) if padding == "valid" else (cy, cx)
    darkness = -x[0, :, py - 2 : py + 3, px - 2 : px + 3].mean()
    torch.testing.assert_close(out[0, cy, cx] - plain(x)[0, cy, cx], 2.5 * darkness)


def test_the_prior_alone_puts_the_highest_logit_on_a_dark_spot():
    prior = net(stain_prior=50.0)
    with torch.no_grad():
        for p in prior.body.parameters():
            p.zero_()
    x = torch.full((1, 3, 40, 40), 1.0)  # light tissue (normalised input)
    x[..., 21:24, 11:14] = -1.0  # a dark 3 x 3 spot centred on pixel (22, 12)
    out = prior(x)[0]
    peak = divmod(int(out.argmax()), out.shape[1])
    assert peak == (22 - prior.radius, 12 - prior.radius)  # valid padding: cell i is centred on pixel i + radius


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_windows_with_the_grid_halo_give_the_whole_pass_logits(padding):
    prior = net(padding=padding, stain_prior=3.0, prior_kernel=7).eval()
    image = torch.randn(1, 3, 45, 52)
    grid = AttentionGrid((45, 52), 16.0, prior.radius, padding)
    with torch.no_grad():
        whole = prior(image)[0]
        for y0, x0, y1, x1 in [(0, 0, 9, 11), (9, 11, 20, 30), (grid.shape[0] - 5, grid.shape[1] - 7, *grid.shape)]:
            (ty, tx), (h, w), (cy, cx) = grid.window(y0, x0, y1, x1)
            part = prior(image[..., ty : ty + h, tx : tx + w])[0]
            torch.testing.assert_close(part[cy : cy + y1 - y0, cx : cx + x1 - x0], whole[y0:y1, x0:x1], rtol=1e-5, atol=1e-5)


def test_the_gain_is_learnt():
    prior = net(stain_prior=1.0)
    assert any(p is prior.gain for p in prior.parameters())
    prior(torch.randn(1, 3, 20, 20)).square().sum().backward()
    assert prior.gain.grad is not None and prior.gain.grad.abs() > 0


@pytest.mark.parametrize(
    "params, message",
    [
        ({"stain_prior": float("nan")}, "stain_prior must be a finite number"),
        ({"stain_prior": float("inf")}, "stain_prior must be a finite number"),
        ({"stain_prior": "dark"}, "stain_prior must be a finite number"),
        ({"stain_prior": True}, "stain_prior must be a finite number"),
        ({"stain_prior": 1.0, "prior_kernel": 4}, "prior_kernel must be a positive odd integer"),
        ({"stain_prior": 1.0, "prior_kernel": 0}, "prior_kernel must be a positive odd integer"),
        ({"stain_prior": 1.0, "prior_kernel": 3.0}, "prior_kernel must be a positive odd integer"),
        ({"stain_prior": 1.0, "prior_kernel": 9}, r"prior_kernel 9 reaches beyond the receptive field \(7 px\)"),
    ],
)
def test_bad_prior_settings_are_rejected_with_the_reason(params, message):
    with pytest.raises(ValueError, match=message):
        net(**params)
