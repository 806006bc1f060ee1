"""Specification of `wsi_ats.ats.sample`: which positions are drawn, how often, and when it
refuses."""

import pytest
import torch

from wsi_ats.ats import sample


def _random_attention(shape: tuple[int, ...], seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    """Softmax over all cells of each row: a valid, non-uniform attention map."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=g, dtype=torch.float64)
    return torch.softmax(logits.reshape(shape[0], -1), dim=1).reshape(shape).to(dtype)


def _all_rows_distinct(positions: torch.Tensor) -> bool:
    return bool((positions.sort(dim=1).values.diff(dim=1) != 0).all())


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("replace", [True, False])
def test_uniform_attention_draws_every_cell_equally_often(replace):
    # 10000 rows of uniform attention over 10 cells, one draw each: counts ~ Binomial(10000, 0.1),
    # standard deviation 30, so 100 is a 3.3-sigma bound.
    attention = torch.full((10000, 10), 0.1)
    indices, _ = sample(attention, 1, replace=replace, generator=_seeded(1))
    counts = torch.bincount(indices[:, 0, 0], minlength=10)
    assert counts.sum() == 10000
    assert (counts - 1000).abs().max() <= 100, counts


def test_without_replacement_draws_in_order_of_successive_renormalised_draws():
    # P(first = i, second = j) = a_i * a_j / (1 - a_i): the defining law of ordered draws
    # without replacement, which is what `expectation` assumes about the returned order.
    a = torch.tensor([0.5, 0.3, 0.15, 0.05])
    draws = 40000
    indices, _ = sample(a.expand(draws, 4).contiguous(), 2, generator=_seeded(2))
    pairs = indices[:, 0, 0] * 4 + indices[:, 1, 0]
    observed = torch.bincount(pairs, minlength=16).double() / draws
    expected = (a[:, None] * a[None, :] / (1 - a[:, None])).double()
    expected.fill_diagonal_(0)
    assert torch.allclose(observed, expected.flatten(), atol=0.01), (observed, expected)


def test_with_replacement_frequencies_follow_non_uniform_attention():
    a = torch.tensor([0.6, 0.25, 0.1, 0.05, 0.0])
    indices, _ = sample(a[None], 40000, replace=True, generator=_seeded(3))
    frequencies = torch.bincount(indices[0, :, 0], minlength=5).double() / 40000
    assert torch.allclose(frequencies, a.double(), atol=0.01)
    assert frequencies[4] == 0


def test_without_replacement_never_repeats_a_position():
    attention = _random_attention((200, 7, 7), seed=4)
    for n in (20, 49):  # part of the grid, and all of it (then every row is a permutation)
        indices, _ = sample(attention, n, generator=_seeded(5))
        flat = indices[..., 0] * 7 + indices[..., 1]
        assert _all_rows_distinct(flat)


@pytest.mark.parametrize("mode", ["replace", "without", "deterministic"])
def test_one_hot_attention_always_draws_the_hot_cell(mode):
    attention = torch.zeros(3, 4, 5)
    attention[0, 2, 3] = attention[1, 0, 0] = attention[2, 3, 4] = 1
    n = 6 if mode == "replace" else 1
    indices, probs = sample(
        attention,
        n,
        replace=mode == "replace",
        deterministic=mode == "deterministic",
        generator=_seeded(6),
    )
    hot = torch.tensor([[2, 3], [0, 0], [3, 4]])
    assert torch.equal(indices, hot[:, None, :].expand(3, n, 2))
    assert torch.equal(probs, torch.ones(3, n))


def test_sparse_attention_draws_all_non_zero_cells_before_any_zero_cell():
    rows, cells, nonzero = 300, 20, 3
    g = _seeded(7)
    attention = torch.zeros(rows, cells)
    support = torch.stack([torch.randperm(cells, generator=g)[:nonzero] for _ in range(rows)])
    attention.scatter_(1, support, torch.rand(rows, nonzero, generator=g) + 0.01)
    attention /= attention.sum(1, keepdim=True)

    indices, probs = sample(attention, 8, generator=g)
    drawn = indices[..., 0]
    assert torch.equal(drawn[:, :nonzero].sort(1).values, support.sort(1).values)
    assert bool((probs[:, :nonzero] > 0).all()) and bool((probs[:, nonzero:] == 0).all())
    assert _all_rows_distinct(drawn)


def test_deterministic_returns_the_highest_attention_cells_in_decreasing_order():
    attention = _random_attention((4, 6, 5), seed=8)
    indices, probs = sample(attention, 7, deterministic=True)
    flat = attention.reshape(4, -1)
    top = flat.sort(1, descending=True).values[:, :7]
    assert torch.equal(probs, top)
    assert torch.equal(sample(attention, 7, deterministic=True)[0], indices)


@pytest.mark.parametrize("shape", [(2, 30), (2, 6, 5), (2, 3, 4, 5)])
@pytest.mark.parametrize("replace", [True, False])
def test_indices_address_the_grid_and_probs_are_the_attention_there(shape, replace):
    attention = _random_attention(shape, seed=9)
    indices, probs = sample(attention, 5, replace=replace, generator=_seeded(10))
    assert indices.dtype == torch.long and indices.shape == (2, 5, len(shape) - 1)
    for b in range(2):
        for k in range(5):
            assert probs[b, k] == attention[(b, *indices[b, k].tolist())]


def test_probs_carry_gradient_to_the_drawn_cells():
    attention = _random_attention((2, 4, 4), seed=11).requires_grad_()
    indices, probs = sample(attention, 3, replace=True, generator=_seeded(12))
    probs.sum().backward()
    counts = torch.zeros(2, 4, 4)
    for b in range(2):
        for y, x in indices[b].tolist():
            counts[b, y, x] += 1
    assert torch.equal(attention.grad, counts)


@pytest.mark.parametrize("replace", [True, False])
def test_same_seed_gives_same_draws_and_another_seed_differs(replace):
    attention = _random_attention((8, 10, 10), seed=13)
    first = sample(attention, 12, replace=replace, generator=_seeded(14))[0]
    again = sample(attention, 12, replace=replace, generator=_seeded(14))[0]
    other = sample(attention, 12, replace=replace, generator=_seeded(15))[0]
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_more_draws_than_cells_is_refused_without_replacement_only():
    attention = torch.full((2, 3, 3), 1 / 9)
    with pytest.raises(ValueError, match="n=10 .* 9 cells"):
        sample(attention, 10)
    with pytest.raises(ValueError, match="n=10 .* 9 cells"):
        sample(attention, 10, deterministic=True)
    indices, _ = sample(attention, 10, replace=True, generator=_seeded(16))
    assert indices.shape == (2, 10, 2)


def _valid(rows: int = 3) -> torch.Tensor:
    return torch.full((rows, 4), 0.25)


@pytest.mark.parametrize(
    ("attention", "message"),
    [
        (_valid().index_put_((torch.tensor(1), torch.tensor(2)), torch.tensor(-0.25)), r"row 1 has negative values \(min -0.25\)"),
        (_valid().index_put_((torch.tensor(2), torch.tensor(0)), torch.tensor(float("nan"))), "row 2 contains NaN"),
        (_valid().index_put_((torch.tensor(0), torch.tensor(3)), torch.tensor(float("inf"))), "row 0 contains NaN or infinite"),
        (_valid() * torch.tensor([[1.0], [1.0], [1.2]]), "row 2 sums to 1.2, expected 1"),
        (torch.full((2, 9), 0.125, dtype=torch.float16), "row 0 sums to 1.125"),
        (torch.full((3,), 1 / 3), r"shape \[B, \*S\] with 1 to 3 spatial dims"),
        (torch.full((1, 2, 2, 2, 2), 1 / 16), "1 to 3 spatial dims"),
        (torch.ones(2, 1, dtype=torch.long), "floating-point"),
    ],
)
def test_invalid_attention_is_refused_naming_the_row_and_reason(attention, message):
    with pytest.raises(ValueError, match=message):
        sample(attention, 1)


def test_half_precision_rows_get_a_looser_sum_tolerance():
    # 7 * 0.125 + (0.125 + 2**-8) = 1.00390625, exact in bfloat16 and float32: within the
    # 1e-2 tolerance of half precision, outside the 1e-3 of float32.
    attention = torch.full((2, 8), 0.125, dtype=torch.bfloat16)
    attention[:, -1] += 2**-8
    indices, probs = sample(attention, 2, generator=_seeded(17))
    assert probs.dtype == torch.bfloat16 and indices.shape == (2, 2, 1)
    with pytest.raises(ValueError, match="row 0 sums to 1.00391"):
        sample(attention.float(), 2)


@pytest.mark.parametrize("n", [0, -1, 2.0, True])
def test_n_must_be_a_positive_integer(n):
    with pytest.raises(ValueError, match="n must be a positive integer"):
        sample(_valid(), n)


def test_deterministic_with_replacement_is_refused():
    with pytest.raises(ValueError, match="deterministic=True .* use replace=False"):
        sample(_valid(), 2, replace=True, deterministic=True)
