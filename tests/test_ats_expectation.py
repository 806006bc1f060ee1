"""Specification of `wsi_ats.ats.expectation`: an unbiased estimate of sum_i a_i f_i from
sampled features, with the original method's gradients (API.md section 2)."""

import itertools

import pytest
import torch

from wsi_ats.ats import expectation, sample

B, K, N, D = 10, 100, 10, 4
DRAWS = 1000


def _problem(seed: int, dtype=torch.float64):
    """A non-uniform attention [B, K], per-cell features [B, K, D] and an output gradient [B, D]."""
    g = torch.Generator().manual_seed(seed)
    attention = torch.softmax(torch.randn(B, K, generator=g, dtype=torch.float64), dim=1)
    features = torch.rand(B, K, D, generator=g, dtype=torch.float64)
    grad_out = 2 * torch.rand(B, D, generator=g, dtype=torch.float64) - 1
    return attention.to(dtype), features.to(dtype), grad_out.to(dtype)


def _monte_carlo(attention, features, grad_out, *, replace, n=N, draws=DRAWS, seed=0):
    """Average over `draws` independent samplings of n cells: the estimate, and the gradients
    of grad_out . estimate w.r.t. the full attention [b, k] and the per-cell features [b, k, d]."""
    rows, dims = features.shape[0], features.shape[2]
    attention = attention.clone().requires_grad_()
    features = features.clone().requires_grad_()
    repeated = attention.repeat(draws, 1)  # row r is attention[r % rows]
    cells, probs = sample(repeated, n, replace=replace, generator=torch.Generator().manual_seed(seed))
    sampled = features.repeat(draws, 1, 1).gather(1, cells[..., :1].expand(-1, -1, dims))
    estimate = expectation(sampled, probs, replace=replace).reshape(draws, rows, dims)
    (estimate * grad_out).sum().div(draws).backward()
    return estimate.mean(0).detach(), attention.grad, features.grad


@pytest.mark.parametrize("replace", [True, False])
def test_forward_is_unbiased(replace):
    attention, features, grad_out = _problem(seed=1)
    mean_estimate, _, _ = _monte_carlo(attention, features, grad_out, replace=replace)
    exact = torch.einsum("bk,bkd->bd", attention, features)
    assert (mean_estimate - exact).abs().max() < 0.01


@pytest.mark.parametrize("replace", [True, False])
def test_feature_gradients_are_unbiased(replace):
    # d/df_i of grad_out . sum_i a_i f_i is a_i * grad_out.
    attention, features, grad_out = _problem(seed=2)
    _, _, feature_grad = _monte_carlo(attention, features, grad_out, replace=replace)
    exact = attention[:, :, None] * grad_out[:, None, :]
    assert (feature_grad - exact).abs().max() < 0.01


def test_attention_gradients_with_replacement_are_unbiased():
    # d/da_i of grad_out . sum_i a_i f_i is grad_out . f_i.
    attention, features, grad_out = _problem(seed=3)
    _, attention_grad, _ = _monte_carlo(attention, features, grad_out, replace=True, draws=4000)
    exact = torch.einsum("bd,bkd->bk", grad_out, features)
    relative_error = ((attention_grad - exact).abs() / exact.abs()).median()
    assert relative_error < 0.1


# ---------------------------------------------------------------- exact checks by enumeration


def _formula_without_replacement(a, f, g):
    """API.md's gradients for one ordered draw, written out loop by loop.

    a: [n] attention of the draws in order, f: [n, D] their features, g: [D].
    Returns (dL/da [n], dL/df [n, D]).
    """
    n = len(a)
    w = 1.0 / n
    pm = [1.0 - sum(a[:k]) for k in range(n)]
    E = [sum(a[j] * f[j] for j in range(k)) + pm[k] * f[k] for k in range(n)]
    grad_a = [w * float(g @ (E[k] / (a[k] / pm[k]) + sum(f[j] for j in range(k)) - k * f[k])) for k in range(n)]
    grad_f = [w * (pm[k] + (n - 1 - k) * a[k]) * g for k in range(n)]
    return torch.tensor(grad_a, dtype=torch.float64), torch.stack(grad_f)


def test_without_replacement_gradients_equal_the_formula_over_all_ordered_draws():
    # K=6 cells, n=3: all 120 ordered draws, each with its probability
    # prod_k a_{o_k} / (1 - sum_{j<k} a_{o_j}). The probability-weighted gradients of the
    # Function must equal the probability-weighted formula, computed independently above.
    cells, n, dims = 6, 3, 2
    g = torch.Generator().manual_seed(4)
    a = torch.softmax(torch.randn(cells, generator=g, dtype=torch.float64), 0)
    f = torch.randn(cells, dims, generator=g, dtype=torch.float64)
    grad_out = torch.randn(dims, generator=g, dtype=torch.float64)

    orders = torch.tensor(list(itertools.permutations(range(cells), n)))
    taken = a[orders]
    chance = (taken / (1 - (taken.cumsum(1) - taken))).prod(1)
    assert torch.isclose(chance.sum(), torch.tensor(1.0, dtype=torch.float64))

    a_leaf, f_leaf = a.clone().requires_grad_(), f.clone().requires_grad_()
    values = expectation(f_leaf[orders], a_leaf[orders])
    (chance[:, None] * values * grad_out).sum().backward()

    want_a = torch.zeros(cells, dtype=torch.float64)
    want_f = torch.zeros(cells, dims, dtype=torch.float64)
    for order, p in zip(orders.tolist(), chance.tolist()):
        grad_a, grad_f = _formula_without_replacement(a[order], f[order], grad_out)
        want_a[order] += p * grad_a
        want_f[order] += p * grad_f

    assert torch.allclose(a_leaf.grad, want_a, rtol=1e-12, atol=1e-12)
    assert torch.allclose(f_leaf.grad, want_f, rtol=1e-12, atol=1e-12)
    # And, exactly: the forward and the feature gradients are unbiased.
    assert torch.allclose((chance[:, None] * values).sum(0), a @ f, rtol=1e-12, atol=1e-12)
    assert torch.allclose(f_leaf.grad, a[:, None] * grad_out, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- autograd cross-checks


def _exclusive_cumsum(x):
    return x.cumsum(1) - x


def _surrogate(features, probs, grad_out, *, replace):
    """A plain-autograd scalar whose gradients are API.md's, for any shape [B, n, *D].

    Feature gradients are those of the forward itself (attention held fixed). Attention
    gradients come from terms c_k * log(a_k) + a_k * d_k with c_k, d_k held fixed, whose
    derivative is c_k / a_k + d_k.
    """
    n = features.shape[1]
    expand = (...,) + (None,) * (features.dim() - 2)
    f_fixed, a_fixed = features.detach(), probs.detach()

    def dot(x):  # grad_out . x_k for every draw k: [B, n, *D] -> [B, n]
        return (x * grad_out[:, None]).reshape(*x.shape[:2], -1).sum(-1)

    if replace:
        forward = features.mean(1)
        score = dot(f_fixed) / n
        return (forward * grad_out).sum() + (score * probs.log()).sum()

    def estimates(f, a):
        pm = 1 - _exclusive_cumsum(a)
        return _exclusive_cumsum(a[expand] * f) + pm[expand] * f, pm

    forward = estimates(features, a_fixed)[0].mean(1)
    E, pm = estimates(f_fixed, a_fixed)
    k = torch.arange(n, dtype=probs.dtype)
    c = dot(E * pm[expand]) / n
    d = dot(_exclusive_cumsum(f_fixed) - k[expand] * f_fixed) / n
    return (forward * grad_out).sum() + (c * probs.log() + probs * d).sum()


@pytest.mark.parametrize("replace", [True, False])
@pytest.mark.parametrize("feature_shape", [(), (5,), (3, 2)])
def test_backward_matches_an_autograd_implementation_of_the_formula(replace, feature_shape):
    g = torch.Generator().manual_seed(5)
    attention = torch.softmax(torch.randn(4, 30, generator=g, dtype=torch.float64), 1)
    _, probs = sample(attention, 7, replace=replace, generator=g)
    features = torch.randn(4, 7, *feature_shape, generator=g, dtype=torch.float64)
    grad_out = torch.randn(4, *feature_shape, generator=g, dtype=torch.float64)

    inputs = (features.requires_grad_(), probs.detach().requires_grad_())
    got = torch.autograd.grad((expectation(*inputs, replace=replace) * grad_out).sum(), inputs)
    want = torch.autograd.grad(_surrogate(*inputs, grad_out, replace=replace), inputs)
    for got_grad, want_grad in zip(got, want):
        assert torch.allclose(got_grad, want_grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("replace", [True, False])
def test_gradcheck_feature_gradients(replace):
    # gradcheck compares the custom backward with finite differences of the forward. That is
    # only meant to hold for the features: the forward is linear in them and the backward is
    # its exact derivative. For the attention, the backward is by design an *estimator* of
    # the gradient of the full expectation, not the derivative of this forward (with
    # replacement the forward does not depend on the attention at all), so the attention
    # gradients are checked against the formula above instead.
    g = torch.Generator().manual_seed(6)
    attention = torch.softmax(torch.randn(3, 12, generator=g, dtype=torch.float64), 1)
    _, probs = sample(attention, 5, replace=replace, generator=g)
    features = torch.randn(3, 5, 2, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda f: expectation(f, probs.detach(), replace=replace), (features,))


# ---------------------------------------------------------------- sparse attention


def test_one_hot_attention_gives_the_hot_cell_features_and_finite_gradients():
    features = torch.randn(2, 3, 4, requires_grad=True)
    attention = torch.zeros(2, 3)
    attention[0, 1] = attention[1, 2] = 1
    attention.requires_grad_()
    for replace, n in [(True, 2), (False, 1), (False, 3)]:
        cells, probs = sample(attention, n, replace=replace)
        sampled = features.gather(1, cells[..., :1].expand(-1, -1, 4))
        value = expectation(sampled, probs, replace=replace)
        assert torch.allclose(value, features[[0, 1], [1, 2]])
        value.sum().backward()
        assert torch.isfinite(attention.grad).all() and torch.isfinite(features.grad).all()


def test_drawing_zero_attention_cells_keeps_the_estimate_unbiased_and_gradients_finite():
    # 3 non-zero cells out of 10 and n=5 without replacement: the last two draws are
    # zero-attention cells, drawn once the mass is exhausted (pm = 0). Their 0/0 score term in
    # the attention gradient is defined as 0.
    g = torch.Generator().manual_seed(7)
    attention = torch.zeros(4, 10, dtype=torch.float64)
    attention[:, [1, 4, 8]] = torch.softmax(torch.randn(4, 3, generator=g, dtype=torch.float64), 1)
    features = torch.rand(4, 10, 3, generator=g, dtype=torch.float64)
    grad_out = torch.ones(4, 3, dtype=torch.float64)
    mean_estimate, attention_grad, feature_grad = _monte_carlo(attention, features, grad_out, replace=False, n=5)
    assert (mean_estimate - torch.einsum("bk,bkd->bd", attention, features)).abs().max() < 0.01
    assert torch.isfinite(attention_grad).all() and torch.isfinite(feature_grad).all()


@pytest.mark.parametrize(
    ("features", "probs"),
    [
        (torch.ones(2, 3), torch.ones(2, 4)),
        (torch.ones(3), torch.ones(1, 3)),
        (torch.ones(2, 3, 5), torch.ones(2, 3, 1)),
        (torch.ones(2, 3, dtype=torch.long), torch.ones(2, 3)),
    ],
)
def test_mismatched_inputs_are_refused(features, probs):
    with pytest.raises(ValueError, match="features .* probs"):
        expectation(features, probs)


# ---------------------------------------------------------------- precision and devices


def _forward_backward(device, dtype, replace, index=None, seed=8):
    """Attention net -> sample -> feature net -> expectation, under autocast to `dtype` (no
    autocast for float32). `index` reuses earlier draws, so that runs in two precisions see
    the same cells. Returns the estimate, both weight gradients and the draws."""
    g = torch.Generator().manual_seed(seed)
    attention_net = torch.nn.Linear(6, 1).to(device)
    feature_net = torch.nn.Linear(6, 16).to(device)
    with torch.no_grad():
        for p in [*attention_net.parameters(), *feature_net.parameters()]:
            p.copy_(torch.randn(p.shape, generator=g))
    cells = torch.randn(4, 64, 6, generator=g).to(device)
    draws = torch.Generator(device=device).manual_seed(seed)
    with torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32):
        attention = torch.softmax(attention_net(cells)[..., 0], dim=1)
        if index is None:
            index, probs = sample(attention, 12, replace=replace, generator=draws)
        else:
            probs = attention.gather(1, index[..., 0])
        picked = cells.gather(1, index[..., :1].expand(-1, -1, 6))
        value = expectation(feature_net(picked), probs, replace=replace)
    value.float().square().sum().backward()
    return value, attention_net.weight.grad, feature_net.weight.grad, index


def _assert_half_run_close_to_float32(device, replace):
    value, attention_grad, feature_grad, index = _forward_backward(device, torch.bfloat16, replace)
    assert value.device.type == device
    assert value.dtype == torch.bfloat16  # the dtype of the features
    reference = _forward_backward(device, torch.float32, replace, index=index)[:3]
    for got, want in zip((value, attention_grad, feature_grad), reference):
        assert torch.isfinite(got).all()
        assert torch.allclose(got.float(), want, rtol=0.05, atol=0.05 * want.abs().max().item())


@pytest.mark.parametrize("replace", [True, False])
def test_cpu_autocast_bfloat16_is_finite_and_close_to_float32(replace):
    _assert_half_run_close_to_float32("cpu", replace)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.cuda
@pytest.mark.parametrize("replace", [True, False])
def test_cuda_autocast_bfloat16_forward_backward(replace):
    _assert_half_run_close_to_float32("cuda", replace)
