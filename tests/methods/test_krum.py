import pytest
import torch

from mtl.methods.krum import Krum
from tests.methods.conftest import random_jacobian

# a, b, c near each other and e far away; squared distances ab = 1, ac = 1, bc = 2, ae = 200, be = ce = 181
ROWS = torch.tensor([[1.0, 1.0], [2.0, 1.0], [1.0, 2.0], [11.0, 11.0]])


def scores_from_rows(jacobian: torch.Tensor, byzantine: int) -> torch.Tensor:
    """The paper's s(i), from the rows themselves: the sum of the K - f - 2 smallest |g_i - g_j|², j ≠ i."""
    rows = jacobian.double()
    scores = []
    for i, row in enumerate(rows):
        others = sorted(float((row - other).pow(2).sum()) for j, other in enumerate(rows) if j != i)
        scores.append(sum(others[: len(rows) - byzantine - 2]))
    return torch.tensor(scores)


def test_krum_follows_the_most_central_gradient(make_method):
    # scores with 2 neighbours: a 1 + 1 = 2, b 1 + 2 = 3, c 1 + 2 = 3, e 181 + 181 = 362
    method = make_method("krum", 4)
    assert torch.equal(method(ROWS, torch.ones(4)), ROWS[0])
    assert torch.equal(method.last_weights, torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64))


def test_the_scores_sum_squared_distances_as_in_the_paper_not_distances(make_method):
    # 3 neighbours each. Squared: a (1,1): b 4 + e 5 + d 9 = 18; b (1,3): c 2 + a 4 + 13 = 19; the
    # others 25, 24, 20. Summed distances would choose b: 2 + √5 + 3 = 7.24 for a, √2 + 2 + √13 = 7.02 for b.
    rows = torch.tensor([[1.0, 1.0], [1.0, 3.0], [2.0, 4.0], [4.0, 1.0], [3.0, 0.0]])
    assert torch.equal(make_method("krum", 5)(rows, torch.ones(5)), rows[0])


def test_multi_krum_averages_the_most_central_gradients_the_lower_index_first_among_ties(make_method):
    # b and c tie at 3: b, the lower index, joins a
    direction = make_method("krum", 4, selected=2)(ROWS, torch.ones(4))
    assert torch.allclose(direction, (ROWS[0] + ROWS[1]) / 2)


def test_more_byzantine_gradients_count_fewer_neighbours(make_method):
    # one neighbour each: a 1, b 1, c 1, e 181; the three tie and a is first
    method = make_method("krum", 4, byzantine=1, selected=3)
    assert torch.allclose(method(ROWS, torch.ones(4)), ROWS[:3].mean(dim=0))


@pytest.mark.parametrize("byzantine", [0, 1, 2])
@pytest.mark.parametrize("seed", range(5))
def test_the_selected_gradient_has_the_lowest_score_computed_from_the_rows(byzantine, seed, make_method):
    jacobian = random_jacobian(7, 5, seed=seed)
    direction = make_method("krum", 7, byzantine=byzantine)(jacobian, torch.ones(7))
    assert torch.allclose(direction, jacobian[scores_from_rows(jacobian, byzantine).argmin()], atol=1e-6)


@pytest.mark.parametrize("seed", range(5))
def test_outlying_gradients_are_never_followed(seed, make_method):
    # K = 7 > 2f + 2 for f = 2: two gradients of norm 1e4 among five near one point
    honest = torch.tensor([1.0, -2.0, 0.5]) + 0.1 * random_jacobian(5, 3, seed=seed)
    outliers = 1e4 * random_jacobian(2, 3, seed=seed + 100)
    jacobian = torch.cat([outliers[:1], honest, outliers[1:]])
    direction = make_method("krum", 7, byzantine=2, selected=3)(jacobian, torch.ones(7))
    assert (direction - honest.mean(dim=0)).norm() < 0.3


def test_too_few_tasks_or_a_bad_selection_are_refused():
    with pytest.raises(ValueError, match=r"with method.byzantine=0 it needs at least 3 tasks; this run has 2"):
        Krum(2)
    with pytest.raises(ValueError, match=r"method.byzantine=2 it needs at least 5 tasks; this run has 4"):
        Krum(4, byzantine=2)
    with pytest.raises(ValueError, match=r"method.byzantine must be a non-negative"):
        Krum(4, byzantine=-1)
    with pytest.raises(ValueError, match=r"method.selected=5 must be in \[1, 4\]"):
        Krum(4, selected=5)



def test_a_tie_of_two_mutual_nearest_gradients_goes_to_the_lower_index_whatever_the_rounding(make_method):
    # with K = 3 and one neighbour each, the two closest rows always tie; a float32 Gramian can hold
    # G_10 and G_01 a rounding apart, which broke the tie by rounding before the Gramian was symmetrized
    gramian = torch.tensor([[1.0, 0.9, 0.0], [0.9 + 1e-7, 1.0, 0.0], [0.0, 0.0, 1.0]])
    weights = make_method("krum", 3).gramian_weights(gramian, torch.ones(3))
    assert torch.equal(weights, torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
