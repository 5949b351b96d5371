"""F-MTL (Algorithm 1 of arXiv:2211.13723) against SAM and the plain step, on tiny networks."""

import functools
import warnings

import pytest
import torch
from torch import nn

from mtl.methods.linear import LinearScalarization
from mtl.methods.mgda import MGDA
from mtl.models import MLP, HardParameterSharing, MLPHead
from mtl.sam import SAM, FlatMTL, TaskLosses
from mtl.sam.base import RandomState
from mtl.sam.fmtl import PerturbedModels, as_jacobian
from mtl.tasks import ClassificationTask, stack_losses
from mtl.tasks import task_losses as separate_losses  # the tests name a TaskLosses `task_losses`
from tests.sam.test_training_step import NormalizedEncoder
from tests.test_module import batch

TASKS = [ClassificationTask("left", 3), ClassificationTask("right", 3)]


def model_for(tasks):
    torch.manual_seed(0)
    return HardParameterSharing(functools.partial(MLP, hidden=(5,)), MLPHead, tasks, (1, 2, 2))


def losses_of(model, tasks, data):
    return stack_losses(tasks, model(data["input"]), data)


def flat_step(fmtl, model, tasks, aggregate, data=None):
    """One F-MTL step as the training module runs it: the random state captured, then the clean pass."""
    data = batch() if data is None else data
    shared = list(model.shared_parameters())
    heads = [list(model.task_parameters(task.name)) for task in tasks]
    randomness = RandomState.capture(data["input"].device)
    losses = separate_losses(tasks, model(data["input"]), data)
    task_losses = TaskLosses(model, data["input"], lambda predictions: separate_losses(tasks, predictions, data), randomness)
    return fmtl.step(clean_gradients(losses, shared, heads), torch.stack(losses).detach(), task_losses, shared, heads, aggregate)


def clean_gradients(losses, shared, heads):
    """The reference clean pass: each task's gradients on the shared parameters (as Jacobian rows) and its head."""
    rows, head_gradients = [], []
    for loss, head in zip(losses, heads):
        gradients = torch.autograd.grad(loss, [*shared, *head], retain_graph=True)
        rows.append(torch.cat([gradient.reshape(-1) for gradient in gradients[: len(shared)]]))
        head_gradients.append(list(gradients[len(shared) :]))
    return torch.stack(rows), head_gradients


def equal_weighting(jacobian, losses):
    return LinearScalarization(len(losses))(losses) @ jacobian


def record_forwards(model, seen):
    """Appends to ``seen`` the weights each forward pass of ``model`` runs at (those of a functional call included)."""
    model.register_forward_pre_hook(lambda module, inputs: seen.append([parameter.detach().clone() for parameter in module.parameters()]))


@pytest.mark.parametrize("batched", [False, True], ids=["loop", "batched"])
@pytest.mark.parametrize("combine", ["sum", "direct"])
def test_one_task_with_equal_weighting_and_a_joint_ball_is_sam(combine, batched):
    tasks = TASKS[:1]
    model, reference = model_for(tasks), model_for(tasks)
    direction, (head_gradients,) = flat_step(FlatMTL(rho=0.4, adaptive=False, norm="joint", combine=combine, batched=batched), model, tasks, equal_weighting)

    data = batch()

    def closure():
        loss = losses_of(reference, tasks, data)
        loss.sum().backward()
        return loss

    SAM(rho=0.4).step(closure, closure, list(reference.parameters()), 0.1)
    expected_shared = torch.cat([parameter.grad.reshape(-1) for parameter in reference.shared_parameters()])
    assert torch.allclose(direction, expected_shared, atol=1e-6)
    for gradient, parameter in zip(head_gradients, reference.task_parameters("left")):
        assert torch.allclose(gradient, parameter.grad, atol=1e-6)
    for parameter, original in zip(model.parameters(), model_for(tasks).parameters()):
        assert torch.equal(parameter, original)


def test_separate_balls_normalize_the_shared_part_and_the_head_each_to_rho():
    tasks, rho = TASKS[:1], 0.4
    model = model_for(tasks)
    seen = []
    record_forwards(model, seen)
    flat_step(FlatMTL(rho=rho, adaptive=False, norm="separate", batched=False), model, tasks, equal_weighting)
    _, perturbed = seen
    shifts = [after - before.detach() for after, before in zip(perturbed, model.parameters())]
    shared_count = len(list(model.shared_parameters()))
    for part in (shifts[:shared_count], shifts[shared_count:]):
        assert float(torch.sqrt(sum((shift**2).sum() for shift in part))) == pytest.approx(rho, rel=1e-5)


def test_the_adaptive_ball_scales_every_tensor_by_its_magnitude_plus_eta():
    tasks, rho, eta = TASKS[:1], 0.4, 0.02
    model = model_for(tasks)
    seen = []
    record_forwards(model, seen)
    flat_step(FlatMTL(rho=rho, adaptive=True, eta=eta, norm="joint", batched=False), model, tasks, equal_weighting)
    _, perturbed = seen
    data = batch()
    gradients = torch.autograd.grad(losses_of(model, tasks, data)[0], list(model.parameters()))
    scales = [parameter.detach().abs() + eta for parameter in model.parameters()]
    norm = torch.sqrt(sum(((scale * gradient) ** 2).sum() for scale, gradient in zip(scales, gradients)))
    for after, parameter, scale, gradient in zip(perturbed, model.parameters(), scales, gradients):
        assert torch.allclose(after - parameter, rho * scale**2 * gradient / norm, atol=1e-6)


def test_each_perturbed_pass_moves_only_the_shared_parameters_and_that_tasks_head():
    model = model_for(TASKS)
    names, original = [name for name, _ in model.named_parameters()], [parameter.detach().clone() for parameter in model.parameters()]
    seen = []
    record_forwards(model, seen)
    flat_step(FlatMTL(rho=0.5, batched=False), model, TASKS, lambda jacobian, losses: jacobian.mean(dim=0))
    _, *perturbed = seen
    shared = {f"encoder.{name}" for name, _ in model.encoder.named_parameters()}
    for task, weights in zip(TASKS, perturbed, strict=True):
        moved = {name for name, weight, start in zip(names, weights, original) if not torch.equal(weight, start)}
        head = {f"heads.{task.name}.{name}" for name, _ in model.heads[task.name].named_parameters()}
        assert moved == shared | head
    for parameter, start in zip(model.parameters(), original):
        assert torch.equal(parameter, start)


def test_the_shared_update_is_the_aggregate_of_the_clean_plus_the_aggregate_of_the_flat_gradients():
    model, calls = model_for(TASKS), []

    def recording(jacobian, losses):
        calls.append(jacobian.clone())
        return jacobian.sum(dim=0) * (len(calls) + 1)

    direction, _ = flat_step(FlatMTL(rho=0.5), model, TASKS, recording)
    clean, flat = calls
    data = batch()
    shared = list(model.shared_parameters())
    expected_clean = torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, shared, retain_graph=True)]) for loss in losses_of(model, TASKS, data)])
    assert torch.allclose(clean, expected_clean, atol=1e-6)
    assert torch.allclose(direction, 2 * clean.sum(dim=0) + 3 * flat.sum(dim=0), atol=1e-6)
    assert flat.abs().sum() > 0


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"norm": "global"}, r"sam.norm must be one of \('separate', 'joint'\), got 'global'"),
        ({"combine": "mean"}, "sam.combine must be one of"),
        ({"rho": -1.0}, "sam.rho must be non-negative"),
        ({"chunk": 0}, "sam.chunk must be a positive number of tasks or null, got 0"),
    ],
)
def test_invalid_settings_are_refused(arguments, message):
    with pytest.raises(ValueError, match=message):
        FlatMTL(**arguments)


THREE_TASKS = [ClassificationTask("left", 3), ClassificationTask("middle", 4), ClassificationTask("right", 2)]


def three_task_batch():
    generator = torch.Generator().manual_seed(2)
    return {"input": torch.randn(6, 1, 2, 2, generator=generator), **{task.name: torch.randint(0, task.num_outputs, (6,), generator=generator) for task in THREE_TASKS}}


def weighted_losses(jacobian, losses):
    return torch.tensor([0.2, 1.5, 0.7]) @ jacobian


@pytest.mark.parametrize("chunk", [None, 2])
@pytest.mark.parametrize("aggregate", [lambda: MGDA(3), lambda: weighted_losses], ids=["mgda", "fixed-weights"])
@pytest.mark.parametrize("combine", ["sum", "direct"])
@pytest.mark.parametrize("adaptive", [True, False])
@pytest.mark.parametrize("norm", ["separate", "joint"])
def test_batched_and_looped_perturbed_passes_give_the_same_update(norm, adaptive, combine, aggregate, chunk):
    data = three_task_batch()
    settings = {"rho": 0.5, "adaptive": adaptive, "eta": 0.01, "norm": norm, "combine": combine}
    looped = flat_step(FlatMTL(**settings, batched=False), model_for(THREE_TASKS), THREE_TASKS, aggregate(), data)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback to the loop
        batched = flat_step(FlatMTL(**settings, batched=True, chunk=chunk), model_for(THREE_TASKS), THREE_TASKS, aggregate(), data)
    assert torch.allclose(batched[0], looped[0], atol=1e-6)
    for batched_head, looped_head in zip(batched[1], looped[1], strict=True):
        for batched_gradient, looped_gradient in zip(batched_head, looped_head, strict=True):
            assert torch.allclose(batched_gradient, looped_gradient, atol=1e-6)
    assert not torch.allclose(batched[0], flat_step(FlatMTL(**{**settings, "rho": 0.0}, batched=False), model_for(THREE_TASKS), THREE_TASKS, aggregate(), data)[0], atol=1e-4)


def test_a_batched_call_that_runs_out_of_memory_halves_the_chunk_and_runs_again(monkeypatch):
    batched = PerturbedModels.batched

    def out_of_memory_above_one_task(models, tasks):
        if len(tasks) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")
        return batched(models, tasks)

    monkeypatch.setattr(PerturbedModels, "batched", out_of_memory_above_one_task)
    data, settings = three_task_batch(), {"rho": 0.5, "eta": 0.01}
    expected = flat_step(FlatMTL(**settings, batched=False), model_for(THREE_TASKS), THREE_TASKS, weighted_losses, data)
    fmtl = FlatMTL(**settings, batched=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        update = flat_step(fmtl, model_for(THREE_TASKS), THREE_TASKS, weighted_losses, data)
    # 3 tasks, then 2: each halved, up to one task per call
    assert [str(warning.message).split(" (")[0] for warning in caught] == [
        "sam.batched=true ran out of memory with 3 tasks in one call",
        "sam.batched=true ran out of memory with 2 tasks in one call",
    ]
    assert fmtl.chunk == 1 and fmtl.batched
    assert torch.allclose(update[0], expected[0], atol=1e-6)


def test_a_batched_call_of_one_task_that_runs_out_of_memory_raises(monkeypatch):
    def out_of_memory(models, tasks):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")

    monkeypatch.setattr(PerturbedModels, "batched", out_of_memory)
    with pytest.raises(torch.OutOfMemoryError):
        flat_step(FlatMTL(rho=0.5, batched=True, chunk=1), model_for(THREE_TASKS), THREE_TASKS, weighted_losses, three_task_batch())


class ItemEncoder(nn.Module):
    """An encoder with data-dependent control flow, which ``vmap`` refuses."""

    out_features = 5

    def __init__(self, input_shape):
        super().__init__()
        self.layers = nn.Sequential(nn.Flatten(), nn.Linear(4, 5), nn.ReLU())

    def forward(self, x):
        features = self.layers(x)
        return features if features.sum().item() > -1e9 else -features


def test_a_model_that_cannot_be_vmapped_falls_back_to_the_loop_with_one_warning():
    torch.manual_seed(0)
    model = HardParameterSharing(ItemEncoder, MLPHead, TASKS, (1, 2, 2))
    fmtl = FlatMTL(rho=0.5, batched=True)
    with pytest.warns(RuntimeWarning, match=r"sam.batched=true is not possible for this model \(.*item.*\); using sam.batched=false"):
        fallen = flat_step(fmtl, model, TASKS, equal_weighting)
    assert fmtl.batched is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = flat_step(fmtl, model, TASKS, equal_weighting)
    expected = flat_step(FlatMTL(rho=0.5, batched=False), model, TASKS, equal_weighting)
    assert torch.allclose(fallen[0], expected[0]) and torch.allclose(again[0], expected[0])


class DropoutEncoder(nn.Module):
    """Flatten → Linear → Dropout → ReLU: the dropout's input is almost surely non-zero, so its mask
    is where its output is non-zero."""

    out_features = 5

    def __init__(self, input_shape):
        super().__init__()
        self.layers = nn.Sequential(nn.Flatten(), nn.Linear(4, 5), nn.Dropout(0.5), nn.ReLU())

    def forward(self, x):
        return self.layers(x)


def dropout_model():
    torch.manual_seed(0)
    return HardParameterSharing(DropoutEncoder, MLPHead, TASKS, (1, 2, 2))


def recording(calls):
    """An aggregator that keeps every Jacobian it is given and returns the sum of its rows."""

    def aggregate(jacobian, losses):
        calls.append(jacobian.clone())
        return jacobian.sum(dim=0)

    return aggregate


@pytest.mark.parametrize("batched", [False, True], ids=["loop", "batched"])
def test_at_rho_zero_the_flat_gradient_is_exactly_zero_on_a_model_with_dropout(batched):
    calls = []
    direction, _ = flat_step(FlatMTL(rho=0.0, batched=batched), dropout_model(), TASKS, recording(calls))
    clean, flat = calls
    assert clean.abs().sum() > 0
    if batched:  # the vmapped backward sums in another order
        assert flat.abs().max() < 1e-6
    else:
        assert torch.equal(flat, torch.zeros_like(flat))
        assert torch.equal(direction, clean.sum(dim=0))


class FixedMask(nn.Module):
    """Dropout with a given mask: ``x * mask / (1 - p)``."""

    def __init__(self, mask, p):
        super().__init__()
        self.mask, self.p = mask, p

    def forward(self, x):
        return x * self.mask / (1 - self.p)


@pytest.mark.parametrize("batched", [False, True], ids=["loop", "batched"])
def test_the_perturbed_passes_see_the_clean_pass_dropout_masks(batched):
    """Every pass draws the clean pass's mask, and each perturbed gradient equals the one computed
    by hand at the perturbed weights with that mask applied by hand."""
    rho, model, masks = 0.3, dropout_model(), []
    # a hook inside vmap sees batched tensors, which cannot leave it: the masks of the loop's passes
    hook = model.encoder.layers[2].register_forward_hook(lambda module, inputs, output: masks.append(output.detach() != 0) if not batched or not masks else None)
    calls = []
    flat_step(FlatMTL(rho=rho, adaptive=False, norm="joint", combine="direct", batched=batched), model, TASKS, recording(calls))
    hook.remove()
    (perturbed,) = calls
    clean_mask = masks[0]
    assert 0 < clean_mask.float().mean() < 1
    assert len(masks) == (1 if batched else 1 + len(TASKS)) and all(torch.equal(mask, clean_mask) for mask in masks)

    by_hand = dropout_model()
    by_hand.encoder.layers[2] = FixedMask(clean_mask, 0.5)
    data = batch()
    shared = list(by_hand.shared_parameters())
    for task_index, task in enumerate(TASKS):
        own = shared + list(by_hand.task_parameters(task.name))
        loss = losses_of(by_hand, TASKS, data)[task_index]
        gradient = torch.autograd.grad(loss, own)
        norm = torch.sqrt(sum((part**2).sum() for part in gradient))
        originals = [parameter.detach().clone() for parameter in own]
        with torch.no_grad():
            for parameter, part in zip(own, gradient):
                parameter.add_(rho * part / norm)
        at_perturbed = torch.autograd.grad(losses_of(by_hand, TASKS, data)[task_index], shared)
        with torch.no_grad():
            for parameter, original in zip(own, originals):
                parameter.copy_(original)
        assert torch.allclose(perturbed[task_index], torch.cat([part.reshape(-1) for part in at_perturbed]), atol=1e-6)


def test_a_step_leaves_the_generators_where_the_clean_pass_left_them():
    model = dropout_model()
    data = batch()
    torch.manual_seed(5)
    losses_of(model, TASKS, data)
    after_clean_pass = torch.get_rng_state()
    torch.manual_seed(5)
    flat_step(FlatMTL(rho=0.5), model, TASKS, equal_weighting, data)
    assert torch.equal(torch.get_rng_state(), after_clean_pass)


def official_step(model, data, rho, norm):
    """The F-MTL step of the official code (VietHoang1512/FS-MTL) for two tasks, written out as it
    is there: ``.backward()`` into ``.grad``, the weights moved in place, BatchNorm's running
    statistics frozen in the perturbed passes (momentum 0), adaptive perturbations
    ``e = rho |w|² g / ‖|w| g‖``, over (trunk + head) together (MultiMNIST ``train.py``,
    ``norm="joint"``) or the trunk and the head each (NYUv2/CelebA ``train.py``, ``norm="separate"``).
    Returns the clean trunk gradients ``g_k``, the flat ones ``h_k`` and each head's perturbed gradient."""
    trunk = list(model.shared_parameters())
    heads = [list(model.task_parameters(task.name)) for task in TASKS]
    clean_losses = losses_of(model, TASKS, data)
    clean, perturbations = [], []
    for index, head in enumerate(heads):
        model.zero_grad()
        clean_losses[index].backward(retain_graph=True)
        clean.append([parameter.grad.clone() for parameter in trunk])
        parts = [trunk + head] if norm == "joint" else [trunk, head]
        perturbation = {}
        for part in parts:
            scale = rho / (torch.norm(torch.stack([(parameter.abs() * parameter.grad).norm() for parameter in part])) + 1e-12)
            perturbation.update({id(parameter): (parameter**2 * parameter.grad * scale).detach() for parameter in part})
        perturbations.append(perturbation)
    momenta = [module.momentum for module in model.modules() if isinstance(module, nn.BatchNorm1d)]
    for module in model.modules():
        if isinstance(module, nn.BatchNorm1d):
            module.momentum = 0.0
    flat, head_gradients = [], []
    for index, head in enumerate(heads):
        originals = [parameter.detach().clone() for parameter in trunk + head]
        with torch.no_grad():
            for parameter in trunk + head:
                parameter.add_(perturbations[index][id(parameter)])
        model.zero_grad()
        losses_of(model, TASKS, data)[index].backward()
        flat.append([parameter.grad - gradient for parameter, gradient in zip(trunk, clean[index])])
        head_gradients.append([parameter.grad.clone() for parameter in head])
        with torch.no_grad():
            for parameter, original in zip(trunk + head, originals):
                parameter.copy_(original)
    for module, momentum in zip((module for module in model.modules() if isinstance(module, nn.BatchNorm1d)), momenta):
        module.momentum = momentum
    rows = lambda gradients: torch.stack([torch.cat([part.reshape(-1) for part in task]) for task in gradients])  # noqa: E731
    return rows(clean), rows(flat), head_gradients


@pytest.mark.parametrize("norm", ["joint", "separate"])
def test_the_step_is_the_official_two_pass_formula_on_a_model_with_batchnorm(norm):
    rho, data = 2.0, batch()
    torch.manual_seed(0)
    official = HardParameterSharing(NormalizedEncoder, MLPHead, TASKS, (1, 2, 2))
    ours = HardParameterSharing(NormalizedEncoder, MLPHead, TASKS, (1, 2, 2))
    ours.load_state_dict(official.state_dict())
    expected_clean, expected_flat, expected_heads = official_step(official, data, rho, norm)
    calls = []
    _, head_gradients = flat_step(FlatMTL(rho=rho, adaptive=True, norm=norm), ours, TASKS, recording(calls), data)
    clean, flat = calls
    assert torch.allclose(clean, expected_clean, atol=1e-6)
    assert torch.allclose(flat, expected_flat, atol=1e-5) and flat.abs().max() > 1e-3
    for ours_head, official_head in zip(head_gradients, expected_heads, strict=True):
        for gradient, expected in zip(ours_head, official_head, strict=True):
            assert torch.allclose(gradient, expected, atol=1e-5)
    # the running statistics moved with the clean pass alone, in both (the official passes still
    # count num_batches_tracked, which a BatchNorm with a momentum never reads)
    for name, buffer in official.named_buffers():
        if not name.endswith("num_batches_tracked"):
            assert torch.allclose(dict(ours.named_buffers())[name], buffer, atol=1e-7), name


def test_task_gradients_become_rows_of_one_jacobian_and_views_of_it():
    shared = [torch.zeros(2, 3), torch.zeros(4)]
    gradients = [([torch.full((2, 3), float(task)), torch.arange(4.0) + task], [torch.ones(1) * task]) for task in range(3)]
    jacobian, views = as_jacobian(gradients, shared)
    assert jacobian.shape == (3, 10)
    for task, (shared_views, head) in enumerate(views):
        assert torch.equal(jacobian[task], torch.cat([torch.full((6,), float(task)), torch.arange(4.0) + task]))
        assert [view.shape for view in shared_views] == [(2, 3), (4,)]
        assert all(view.untyped_storage().data_ptr() == jacobian.untyped_storage().data_ptr() for view in shared_views)
        assert torch.equal(shared_views[1], torch.arange(4.0) + task) and torch.equal(head[0], torch.ones(1) * task)
