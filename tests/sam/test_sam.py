"""SAM, ASAM and GSAM against hand-written two-pass computations, on a tiny network."""

import pytest
import torch
from torch import nn

from mtl.sam import GSAM, SAM

RHO = 0.3


def network(bias: bool = True) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4, bias=bias), nn.ReLU(), nn.Linear(4, 2, bias=bias))


def data():
    generator = torch.Generator().manual_seed(1)
    return torch.randn(8, 3, generator=generator), torch.randn(8, 2, generator=generator)


def loss_of(model, inputs, targets):
    return ((model(inputs) - targets) ** 2).mean()


def closure_for(model, inputs, targets, seen=None):
    """Backpropagates the loss; records the weights it ran at in ``seen``."""

    def closure():
        if seen is not None:
            seen.append([parameter.detach().clone() for parameter in model.parameters()])
        loss = loss_of(model, inputs, targets)
        loss.backward()
        return loss.detach().unsqueeze(0)

    return closure


def sharpness_step(sharpness, model, learning_rate=0.1, seen=None):
    inputs, targets = data()
    closure = closure_for(model, inputs, targets, seen)
    return sharpness.step(closure, closure, list(model.parameters()), learning_rate)


def gradient_at(model, weights):
    """``∇L`` at ``weights`` (a list matching the model's parameters), computed on a copy."""
    inputs, targets = data()
    copy = network(bias=len(weights) == 4)
    with torch.no_grad():
        for parameter, weight in zip(copy.parameters(), weights):
            parameter.copy_(weight)
    return torch.autograd.grad(loss_of(copy, inputs, targets), list(copy.parameters()))


def hand_written_step(model, scales):
    """The two passes by hand: ``e = rho T² g / |T g|`` and the gradient at ``w + e``."""
    weights = [parameter.detach().clone() for parameter in model.parameters()]
    clean = gradient_at(model, weights)
    scaled = [scale * gradient for scale, gradient in zip(scales, clean)]
    norm = torch.sqrt(sum((tensor**2).sum() for tensor in scaled))
    shifts = [RHO * scale * tensor / norm for scale, tensor in zip(scales, scaled)]
    return weights, clean, shifts, gradient_at(model, [w + e for w, e in zip(weights, shifts)])


def test_a_sam_step_is_the_gradient_at_the_normalized_ascent_point_and_restores_the_weights():
    model = network()
    weights, _, _, expected = hand_written_step(model, [torch.tensor(1.0)] * 4)
    losses = sharpness_step(SAM(rho=RHO), model)
    assert torch.allclose(losses, loss_of(network(), *data()).unsqueeze(0))
    for parameter, weight, gradient in zip(model.parameters(), weights, expected):
        assert torch.equal(parameter.detach(), weight)
        assert torch.allclose(parameter.grad, gradient, atol=1e-6)


@pytest.mark.parametrize("sharpness", [SAM(rho=0.0), SAM(rho=0.0, adaptive=True), GSAM(max_learning_rate=0.1, rho_max=0.0, alpha=0.3)], ids=["sam", "asam", "gsam"])
def test_at_rho_zero_on_a_network_with_dropout_the_step_is_the_plain_gradient(sharpness):
    """The pass at ``w + e`` replays the clean pass's dropout masks: at ``e = 0`` it is the clean pass."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 16), nn.Dropout(0.5), nn.ReLU(), nn.Linear(16, 2))
    inputs, targets = data()
    torch.manual_seed(7)
    expected = torch.autograd.grad(loss_of(model, inputs, targets), list(model.parameters()))
    torch.manual_seed(7)
    closure = closure_for(model, inputs, targets)
    sharpness.step(closure, closure, list(model.parameters()), 0.1)
    for parameter, gradient in zip(model.parameters(), expected):
        assert torch.allclose(parameter.grad, gradient, rtol=0, atol=1e-7)  # GSAM's projection rounds


def test_an_asam_step_scales_weight_tensors_by_their_magnitude_plus_eta_and_leaves_biases_alone():
    model = network()
    eta = 0.05
    scales = [parameter.detach().abs() + eta if parameter.dim() > 1 else torch.tensor(1.0) for parameter in model.parameters()]
    _, _, _, expected = hand_written_step(model, scales)
    sharpness_step(SAM(rho=RHO, adaptive=True, eta=eta), model)
    for parameter, gradient in zip(model.parameters(), expected):
        assert torch.allclose(parameter.grad, gradient, atol=1e-6)


def perturbation(sharpness, scale):
    """The perturbation of a bias-free ReLU network with its first layer times ``scale`` and its second divided by it."""
    model = network(bias=False)
    with torch.no_grad():
        model[0].weight.mul_(scale)
        model[2].weight.div_(scale)
    seen = []
    sharpness_step(sharpness, model, seen=seen)
    clean, perturbed = seen
    return [after - before for before, after in zip(clean, perturbed)], perturbed


@pytest.mark.parametrize("scale", [0.25, 3.0])
def test_asam_perturbations_follow_a_function_preserving_rescaling(scale):
    asam = SAM(rho=RHO, adaptive=True, eta=0.0)
    (first, second), _ = perturbation(asam, 1.0)
    (scaled_first, scaled_second), perturbed = perturbation(asam, scale)
    assert torch.allclose(scaled_first, scale * first, atol=1e-6)
    assert torch.allclose(scaled_second, second / scale, atol=1e-6)
    # the perturbed network computes the same function: the adaptive sharpness is scale invariant
    _, unscaled = perturbation(asam, 1.0)
    inputs, _ = data()
    outputs = [nn.Sequential(nn.Linear(3, 4, bias=False), nn.ReLU(), nn.Linear(4, 2, bias=False)) for _ in range(2)]
    for model, weights in zip(outputs, (perturbed, unscaled)):
        with torch.no_grad():
            for parameter, weight in zip(model.parameters(), weights):
                parameter.copy_(weight)
    assert torch.allclose(outputs[0](inputs), outputs[1](inputs), atol=1e-5)


def test_sam_perturbations_do_not_follow_the_rescaling():
    (first, _), _ = perturbation(SAM(rho=RHO), 1.0)
    (scaled_first, _), _ = perturbation(SAM(rho=RHO), 3.0)
    assert not torch.allclose(scaled_first, 3.0 * first, atol=1e-3)


def test_gsam_with_alpha_zero_is_sam():
    sam_model, gsam_model = network(), network()
    sharpness_step(SAM(rho=RHO), sam_model)
    sharpness_step(GSAM(max_learning_rate=0.1, rho_max=RHO, alpha=0.0), gsam_model, learning_rate=0.1)
    for sam_parameter, gsam_parameter in zip(sam_model.parameters(), gsam_model.parameters()):
        assert torch.allclose(sam_parameter.grad, gsam_parameter.grad, atol=1e-7)


def test_gsam_subtracts_alpha_times_the_clean_gradient_orthogonal_to_the_sam_gradient():
    model, alpha = network(), 0.7
    _, clean, _, perturbed = hand_written_step(model, [torch.tensor(1.0)] * 4)
    flat_clean, flat_perturbed = (torch.cat([tensor.reshape(-1) for tensor in tensors]) for tensors in (clean, perturbed))
    orthogonal = flat_clean - (flat_clean @ flat_perturbed) / (flat_perturbed @ flat_perturbed) * flat_perturbed
    expected = flat_perturbed - alpha * orthogonal
    sharpness_step(GSAM(max_learning_rate=0.1, rho_max=RHO, alpha=alpha), model, learning_rate=0.1)
    assert torch.allclose(torch.cat([parameter.grad.reshape(-1) for parameter in model.parameters()]), expected, atol=1e-6)
    assert abs(float(orthogonal @ flat_perturbed)) < 1e-6


def test_the_gsam_radius_follows_the_learning_rate_between_its_bounds():
    gsam = GSAM(max_learning_rate=0.1, min_learning_rate=0.0, rho_max=0.4, rho_min=0.1)
    assert gsam.radius(0.1) == pytest.approx(0.4)
    assert gsam.radius(0.05) == pytest.approx(0.25)
    assert gsam.radius(0.0) == pytest.approx(0.1)
    assert gsam.radius(0.2) == pytest.approx(0.4)


def test_gsam_perturbs_by_the_radius_of_the_current_learning_rate():
    gsam = GSAM(max_learning_rate=0.1, rho_max=0.4, rho_min=0.0, alpha=0.0)
    seen = []
    sharpness_step(gsam, network(), learning_rate=0.025, seen=seen)
    clean, perturbed = seen
    shift = torch.sqrt(sum(((after - before) ** 2).sum() for before, after in zip(clean, perturbed)))
    assert float(shift) == pytest.approx(0.1, rel=1e-5)


@pytest.mark.parametrize(("arguments", "message"), [({"rho": -1.0}, "sam.rho must be non-negative, got -1.0"), ({"eta": -0.1}, "sam.eta must be non-negative")])
def test_invalid_settings_are_refused(arguments, message):
    with pytest.raises(ValueError, match=message):
        SAM(**arguments)
