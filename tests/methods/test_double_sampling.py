import pytest
import torch

from mtl.tasks import split_batch

G_DIAGONAL = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
G_THIRD = torch.tensor([[1.0, 1.0], [0.0, 1.0]])


def samples(first, second, third):
    return torch.stack([first, second, third])


def test_modo_takes_one_projected_step_on_the_cross_gramian(make_method):
    method = make_method("modo", 2, gamma=0.1, rho=0.0)
    direction = method(samples(G_DIAGONAL, G_DIAGONAL, G_THIRD), torch.ones(3, 2))
    # G_1 G_2ᵀ = diag(1, 4); lambda = (0.5, 0.5) - 0.1 (0.5, 2.0) = (0.45, 0.30); projecting onto the
    # simplex adds (1 - 0.75) / 2 = 0.125 to both: (0.575, 0.425). d = lambda @ G_3 = (0.575, 1.0).
    assert torch.allclose(method.task_weights, torch.tensor([0.575, 0.425], dtype=torch.float64))
    assert torch.allclose(direction, torch.tensor([0.575, 1.0]))


def test_modo_regularisation_pulls_towards_uniform_weights(make_method):
    method = make_method("modo", 2, gamma=0.1, rho=1.0)
    method(samples(G_DIAGONAL, G_DIAGONAL, G_THIRD), torch.ones(3, 2))
    # (0.5, 0.5) - 0.1 ((0.5, 2.0) + (0.5, 0.5)) = (0.40, 0.25) -> + 0.175 = (0.575, 0.425)
    assert torch.allclose(method.task_weights, torch.tensor([0.575, 0.425], dtype=torch.float64))


def test_sdmgrad_without_the_mean_term_finds_the_min_norm_weights(make_method):
    method = make_method("sdmgrad", 2, lamda=0.0, iterations=300, lr=0.5)
    direction = method(samples(G_DIAGONAL, G_DIAGONAL, G_DIAGONAL), torch.ones(3, 2))
    # min over the simplex of |w_1 (1, 0) + w_2 (0, 2)|^2 = w_1^2 + 4 w_2^2: w = (0.8, 0.2), d = (0.8, 0.4)
    assert torch.allclose(method.task_weights, torch.tensor([0.8, 0.2], dtype=torch.float64), atol=1e-6)
    assert torch.allclose(direction, torch.tensor([0.8, 0.4]), atol=1e-6)


def test_sdmgrad_mixes_the_direction_with_the_mean_gradient(make_method):
    method = make_method("sdmgrad", 2, lamda=0.5, iterations=1)
    direction = method(samples(G_DIAGONAL, G_DIAGONAL, G_THIRD), torch.ones(3, 2))
    weights = method.task_weights.float()
    expected = (weights @ G_THIRD + 0.5 * G_THIRD.mean(dim=0)) / 1.5
    assert torch.allclose(direction, expected)


@pytest.mark.parametrize("name", ["modo", "sdmgrad"])
def test_the_weights_travel_in_the_state_dict(name, make_method):
    first = make_method(name, 2)
    jacobians = torch.randn(3, 2, 5, generator=torch.Generator().manual_seed(0))
    first(jacobians, torch.ones(3, 2))
    second = make_method(name, 2)
    second.load_state_dict(first.state_dict())
    assert torch.equal(first(jacobians, torch.ones(3, 2)), second(jacobians, torch.ones(3, 2)))


@pytest.mark.parametrize("name", ["modo", "sdmgrad"])
def test_a_single_jacobian_is_refused(name, make_method):
    with pytest.raises(ValueError, match=r"needs 3 Jacobians \(N, K, P\), got shape \(2, 5\)"):
        make_method(name, 2)(torch.ones(2, 5), torch.ones(2))


def test_split_batch_cuts_every_key_into_disjoint_parts():
    batch = {"input": torch.arange(7), "left": torch.arange(7) * 10}
    parts = split_batch(batch, 3)
    assert [part["input"].tolist() for part in parts] == [[0, 1, 2], [3, 4], [5, 6]]
    assert [part["left"].tolist() for part in parts] == [[0, 10, 20], [30, 40], [50, 60]]
    with pytest.raises(ValueError, match="a batch of 7 samples cannot be split into 8 independent samples"):
        split_batch(batch, 8)
