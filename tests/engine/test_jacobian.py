"""The Jacobian engine against plain per-task ``torch.autograd.grad`` on the whole model."""

import collections
import copy
import functools
import itertools
import logging
import time
import warnings

import pytest
import torch
from torch import nn

from mtl.build import build_datamodule_and_module
from mtl.engine import MultiTaskModule, jacobian
from mtl.engine import modes as engine_modes
from mtl.engine.auto_mode import TRIAL_STEPS, ModeTrial
from mtl.engine.jacobian import own_memory, task_jacobian
from mtl.engine.jacobian_modes import JacobianEngine
from mtl.engine.modes import BatchedRows, LoopRows
from mtl.methods import GramianWeighting
from mtl.methods.double_sampling import MoDo
from mtl.methods.dual_cone import UPGrad
from mtl.methods.moco import MoCo
from mtl.models import MLP, HardParameterSharing, MLPHead, ResNet
from mtl.tasks import ClassificationTask, stack_losses, task_losses
from mtl.train import train
from tests.test_module import one_training_step

TASKS = [ClassificationTask("a", 3), ClassificationTask("b", 2), ClassificationTask("c", 4)]
EXACT = ["loop", "batched", "auto"]
LR = 0.1


class MLPWithUnused(MLP):
    """An MLP encoder holding a parameter that no loss reaches."""

    def __init__(self, input_shape, **options):
        super().__init__(input_shape, **options)
        self.unused = nn.Parameter(torch.ones(3))


class NoBatchingRule(torch.autograd.Function):
    """Doubles its input; the backward goes through NumPy, which vmap cannot batch."""

    @staticmethod
    def forward(ctx, x):
        return 2 * x

    @staticmethod
    def backward(ctx, gradient):
        return torch.from_numpy(gradient.numpy() * 2)


class MLPWithoutBatchingRule(MLP):
    def forward(self, x):
        return NoBatchingRule.apply(super().forward(x))


class WholeModel(nn.Module):
    """The same network seen without ``encode``/``decode``: the engine's general path."""

    def __init__(self, model):
        super().__init__()
        self.inner = model

    def forward(self, x):
        return self.inner(x)

    def shared_parameters(self):
        return self.inner.shared_parameters()

    def task_parameters(self, name):
        return self.inner.task_parameters(name)


class HeadsReadingZ(HardParameterSharing):
    """Hard parameter sharing without ``decode_each``: every head reads ``z`` itself, so the engine
    takes each ``dL_k/dz`` from its task's own loss."""

    decode_each = None

    def decode(self, z):
        return {name: head(z) for name, head in self.heads.items()}


def mlp_with_dropout():
    return HardParameterSharing(functools.partial(MLP, hidden=(6, 5), dropout=0.3), MLPHead, TASKS, (1, 2, 2))


def resnet_with_batch_norm():
    return HardParameterSharing(functools.partial(ResNet, widths=(2, 3)), MLPHead, TASKS, (1, 5, 5))


def mlp_with_unused_parameter():
    return HardParameterSharing(functools.partial(MLPWithUnused, hidden=(4,)), MLPHead, TASKS, (1, 2, 2))


def general_model():
    return WholeModel(mlp_with_dropout())


def heads_reading_z():
    return HeadsReadingZ(functools.partial(MLP, hidden=(6, 5), dropout=0.3), MLPHead, TASKS, (1, 2, 2))


MODELS = {"dropout": mlp_with_dropout, "batch_norm": resnet_with_batch_norm, "unused": mlp_with_unused_parameter, "general": general_model, "heads_reading_z": heads_reading_z}
NAMES = [task.name for task in TASKS]


def make(model_name, seed=0):
    torch.manual_seed(seed)
    return MODELS[model_name]()


def batch(model_name, size=6, seed=1):
    generator = torch.Generator().manual_seed(seed)
    shape = (1, 5, 5) if model_name == "batch_norm" else (1, 2, 2)
    data = {"input": torch.randn(size, *shape, generator=generator)}
    data.update({task.name: torch.randint(0, task.num_outputs, (size,), generator=generator) for task in TASKS})
    return data


def shared(model):
    return list(model.shared_parameters())


def reference_jacobian(model, data, seed=2):
    """Per-task ``torch.autograd.grad`` through the whole model, dropout drawn from ``seed``."""
    torch.manual_seed(seed)
    losses = stack_losses(TASKS, model(data["input"]), data)
    return task_jacobian(losses, shared(model)), losses


def engine_jacobian(engine, model, data, seed=2):
    torch.manual_seed(seed)
    representation, predictions = engine.forward(model, data["input"], NAMES)
    losses = stack_losses(TASKS, predictions, data)
    return engine.jacobians(losses[None], [representation], shared(model))[0]


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("mode", EXACT)
def test_the_exact_modes_give_the_reference_jacobian(mode, model_name):
    model, data = make(model_name), batch(model_name)
    expected, _ = reference_jacobian(copy.deepcopy(model), data)
    jacobian = engine_jacobian(JacobianEngine(mode), model, data)
    assert jacobian.shape == expected.shape
    assert torch.allclose(jacobian, expected, atol=1e-6)
    if model_name == "unused":
        offset = sum(p.numel() for p in shared(model)[: [p is model.encoder.unused for p in shared(model)].index(True)])
        assert torch.all(jacobian[:, offset : offset + 3] == 0)


VMAPS = {"torch.func": jacobian.vmapped_products, "prototype": jacobian.prototype_batched_products}


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("vmap", VMAPS)
def test_both_vmaps_give_the_reference_jacobian(vmap, model_name, monkeypatch):
    # batched takes torch.func's vmap on CUDA and the prototype elsewhere; both on the CPU here
    monkeypatch.setattr(engine_modes, "batched_vector_jacobian_products", VMAPS[vmap])
    model, data = make(model_name), batch(model_name)
    expected, _ = reference_jacobian(copy.deepcopy(model), data)
    engine = JacobianEngine("batched")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a fallback to loop would give the reference too
        assert torch.allclose(engine_jacobian(engine, model, data), expected, atol=1e-6)
    assert engine.mode == "batched"


@pytest.mark.parametrize("vmap", VMAPS)
def test_both_vmaps_give_the_blocks_of_the_reference_direction_with_an_unused_parameter(vmap, monkeypatch):
    monkeypatch.setattr(engine_modes, "batched_vector_jacobian_products", VMAPS[vmap])
    model, data = make("unused"), batch("unused")
    expected, losses = reference_jacobian(copy.deepcopy(model), data)
    engine = JacobianEngine("batched")
    write_gradients(engine, UPGrad(len(TASKS)), model, data)
    direction = torch.cat([parameter.grad.flatten() for parameter in shared(model)])
    assert torch.allclose(direction, UPGrad(len(TASKS))(expected, losses.detach()), atol=1e-6)
    assert torch.all(model.encoder.unused.grad == 0) and engine.mode == "batched"


def test_a_pass_that_torch_func_cannot_batch_falls_back_to_loop_with_its_reason(monkeypatch):
    monkeypatch.setattr(engine_modes, "batched_vector_jacobian_products", jacobian.vmapped_products)
    model = HardParameterSharing(functools.partial(MLPWithoutBatchingRule, hidden=(4,)), MLPHead, TASKS, (1, 2, 2))
    data, engine = batch("dropout"), JacobianEngine("batched")
    expected, _ = reference_jacobian(model, data)
    # a batched tensor has no memory of its own for NumPy to read
    with pytest.warns(RuntimeWarning, match=r"jacobian.mode=batched is not possible for this model \(Cannot access data pointer"):
        assert torch.allclose(engine_jacobian(engine, model, data), expected, atol=1e-6)
    assert engine.mode == "loop"


@pytest.mark.parametrize("mode", ["loop", "batched"])
@pytest.mark.parametrize("model_name", ["dropout", "heads_reading_z"])
def test_only_batched_stacks_the_task_gradients_with_respect_to_z(mode, model_name):
    # loop backpropagates each dL_k/dz as autograd returned it: no (K, *z.shape) copy of them
    model, data = make(model_name), batch(model_name)
    expected, _ = reference_jacobian(copy.deepcopy(model), data)
    engine = JacobianEngine(mode)
    assert torch.allclose(engine_jacobian(engine, model, data), expected, atol=1e-6)
    assert ("representation0" in engine._buffers) == (mode == "batched")


@pytest.mark.parametrize("chunk", [1, 2, 5])
def test_batched_chunks_give_the_same_jacobian(chunk):
    model, data = make("dropout"), batch("dropout")
    expected, _ = reference_jacobian(copy.deepcopy(model), data)
    assert torch.allclose(engine_jacobian(JacobianEngine("batched", chunk), model, data), expected, atol=1e-6)


@pytest.mark.parametrize("model_name", ["dropout", "batch_norm", "heads_reading_z"])
def test_the_backward_through_the_heads_gives_each_task_gradient_with_respect_to_z_and_the_heads_gradients(model_name):
    model, data = make(model_name), batch(model_name)
    reference = copy.deepcopy(model)
    torch.manual_seed(2)
    representation = reference.encode(data["input"]).detach().requires_grad_()
    losses = stack_losses(TASKS, reference.decode(representation), data)
    expected = torch.stack([torch.autograd.grad(loss, representation, retain_graph=True)[0] for loss in losses])
    heads = [parameter for name in NAMES for parameter in reference.task_parameters(name)]
    expected_heads = torch.autograd.grad(losses.sum(), heads)

    engine = JacobianEngine("rep")
    torch.manual_seed(2)
    representation, predictions = engine.forward(model, data["input"], NAMES)
    assert (representation.copies is None) == (model_name == "heads_reading_z")
    separate = task_losses(TASKS, predictions, data)
    heads = [parameter for name in NAMES for parameter in model.task_parameters(name)]
    [(outputs, rows)], head_gradients = engine.backward_through_heads([separate], torch.stack(separate)[None], [representation], heads)
    assert outputs is representation.tensor
    assert torch.allclose(rows, expected, atol=1e-7)
    for gradient, target in zip(head_gradients, expected_heads):
        assert torch.allclose(gradient, target, atol=1e-7)


@pytest.mark.parametrize("mode", ["batched", "auto"])
def test_a_batched_call_without_a_batching_rule_falls_back_to_loop_with_one_warning(mode):
    model = HardParameterSharing(functools.partial(MLPWithoutBatchingRule, hidden=(4,)), MLPHead, TASKS, (1, 2, 2))
    engine = JacobianEngine(mode)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for seed in (1, 3):
            data = batch("dropout", seed=seed)
            expected, _ = reference_jacobian(model, data)
            assert torch.allclose(engine_jacobian(engine, model, data), expected, atol=1e-6)
    messages = [str(warning.message) for warning in caught if issubclass(warning.category, RuntimeWarning)]
    assert len(messages) == 1
    assert "jacobian.mode=batched is not possible" in messages[0] and "Batching rule not implemented for aten::" in messages[0]
    assert engine.mode == "loop"


def test_the_mode_trial_runs_each_mode_in_turn_and_keeps_the_mode_of_the_best_step_after_the_warm_ups():
    trial = ModeTrial(("loop", "batched"), steps=2)
    # loop's warm-up is the fastest step of all, batched's best timed step beats loop's
    seconds = {"loop": [0.1, 4.0, 3.0], "batched": [9.0, 2.5, 5.0]}
    turns, choices = [], []
    for _ in range(6):
        mode = trial.mode
        turns.append(mode)
        choices.append(trial.record(mode, seconds[mode][turns.count(mode) - 1]))
    assert turns == ["loop"] * 3 + ["batched"] * 3
    assert choices == [None] * 5 + ["batched"]


def write_gradients(engine, method, model, data, seed=2):
    """One call of the engine's ``write_gradients`` for the whole batch, dropout drawn from ``seed``."""
    torch.manual_seed(seed)
    representation, predictions = engine.forward(model, data["input"], NAMES)
    engine.write_gradients(method, stack_losses(TASKS, predictions, data)[None], [representation], shared(model))


def slowed(work, seconds=0.1):  # far above the noise of a loaded 2-core machine
    def slow_work(*arguments):
        time.sleep(seconds)
        return work(*arguments)

    return slow_work


@pytest.mark.parametrize("slow", ["loop", "batched"])
def test_auto_times_whole_steps_of_each_mode_and_keeps_the_faster(slow, caplog, monkeypatch):
    model, data = make("dropout"), batch("dropout")
    expected, _ = reference_jacobian(copy.deepcopy(model), data)
    engine, method = JacobianEngine("auto"), Recording(len(TASKS))
    mode, backward = (LoopRows, "fill") if slow == "loop" else (BatchedRows, "products")
    monkeypatch.setattr(mode, backward, slowed(getattr(mode, backward)))
    modes = []
    with caplog.at_level(logging.INFO, logger="mtl.engine.jacobian_modes"):
        peak_buffers = collections.defaultdict(set)
        for _ in range(2 * (TRIAL_STEPS + 1) + 2):
            modes.append(engine.running_mode)
            write_gradients(engine, method, model, data)
            assert torch.allclose(method.jacobian, expected, atol=1e-6)
            peak_buffers[modes[-1]] |= {"jacobian"} & set(engine._buffers)
    fast = "batched" if slow == "loop" else "loop"
    assert modes == ["batched"] * (TRIAL_STEPS + 1) + ["loop"] * (TRIAL_STEPS + 1) + [fast, fast]
    # batched's trial steps, before loop's, never allocated loop's (K, P) buffer
    assert peak_buffers["batched"] == set() and "jacobian" in peak_buffers["loop"]
    assert [record.getMessage().split(" (")[0] for record in caplog.records] == [f"jacobian.mode=auto chose {fast}"]
    # the (K, P) buffer of the loop's trial steps is not kept when batched, which needs none here, is chosen
    assert ("jacobian" in engine._buffers) == (fast == "loop")


@pytest.mark.parametrize("chunk", [None, 2])
def test_batched_hands_a_gramian_weighting_the_jacobian_in_blocks_without_the_buffer(chunk):
    model, data = make("unused"), batch("unused")
    expected, losses = reference_jacobian(copy.deepcopy(model), data)
    expected_direction = UPGrad(len(TASKS))(expected, losses.detach())
    engine = JacobianEngine("batched", chunk)
    write_gradients(engine, UPGrad(len(TASKS)), model, data)
    direction = torch.cat([parameter.grad.flatten() for parameter in shared(model)])
    assert torch.allclose(direction, expected_direction, atol=1e-6)
    assert torch.all(model.encoder.unused.grad == 0)
    # every task in one vmapped pass: its blocks are the Jacobian; in chunks: the (K, P) buffer
    assert ("jacobian" in engine._buffers) == (chunk is not None)


def test_the_blocks_fall_back_to_loop_without_a_batching_rule():
    model, data = HardParameterSharing(functools.partial(MLPWithoutBatchingRule, hidden=(4,)), MLPHead, TASKS, (1, 2, 2)), batch("dropout")
    expected, _ = reference_jacobian(model, data)
    engine, method = JacobianEngine("batched"), Recording(len(TASKS))
    with pytest.warns(RuntimeWarning, match="jacobian.mode=batched is not possible"):
        write_gradients(engine, method, model, data)
    assert engine.mode == "loop"
    assert torch.allclose(method.jacobian, expected, atol=1e-6)


def batched_passes_run_out_of_memory(monkeypatch, above=0, after=0):
    """Every vmapped pass of more than ``above`` tasks raises CUDA's out-of-memory error, once
    ``after`` of them have run."""
    products = engine_modes.batched_vector_jacobian_products
    large_passes = itertools.count()

    def limited(outputs, cotangents, inputs):
        if len(cotangents) > above and next(large_passes) >= after:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")
        return products(outputs, cotangents, inputs)

    monkeypatch.setattr(engine_modes, "batched_vector_jacobian_products", limited)


@pytest.mark.parametrize("mode", ["batched", "auto"])
def test_a_batched_pass_that_runs_out_of_memory_halves_the_chunk_and_runs_again(mode, monkeypatch):
    model, data = make("dropout"), batch("dropout")
    expected, _ = reference_jacobian(copy.deepcopy(model), data)
    batched_passes_run_out_of_memory(monkeypatch, above=2)
    engine, method = JacobianEngine(mode), Recording(len(TASKS))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        write_gradients(engine, method, model, data)
    assert [str(warning.message) for warning in caught] == [
        "jacobian.mode=batched ran out of memory with 3 tasks in one call (CUDA out of memory. Tried to allocate 9.00 GiB); using jacobian.chunk=2"
    ]
    assert engine.chunk == 2 and engine.running_mode == "batched"
    assert torch.allclose(method.jacobian, expected, atol=1e-6)
    engine._buffers["jacobian"].fill_(float("nan"))  # the next step must fill every row again
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # the later steps run in chunks of 2 at once
        write_gradients(engine, method, model, data)
    assert torch.allclose(method.jacobian, expected, atol=1e-6)


def auto_modes(engine, method, model, data, steps):
    """The mode of each of ``steps`` steps of ``engine``, its warnings ignored."""
    modes = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for _ in range(steps):
            modes.append(engine.running_mode)
            write_gradients(engine, method, model, data)
    return modes


def test_auto_times_batched_again_in_the_chunks_it_halved_to(monkeypatch):
    # batched's warm-up and first timed step pass; its second timed step runs out of memory with
    # all 3 tasks: batched's steps are counted from nothing again, in chunks of 2
    model, data = make("dropout"), batch("dropout")
    batched_passes_run_out_of_memory(monkeypatch, above=2, after=2)
    engine, method = JacobianEngine("auto"), Recording(len(TASKS))
    modes = auto_modes(engine, method, model, data, 2 * TRIAL_STEPS + 5)
    assert modes == ["batched"] * (3 + 1 + TRIAL_STEPS) + ["loop"] * (1 + TRIAL_STEPS)
    assert engine.mode in ("batched", "loop") and engine.chunk == 2


def test_auto_runs_its_trial_again_when_the_batched_it_chose_runs_out_of_memory(monkeypatch):
    model, data = make("dropout"), batch("dropout")
    engine, method = JacobianEngine("auto"), Recording(len(TASKS))
    monkeypatch.setattr(LoopRows, "fill", slowed(LoopRows.fill))  # so that auto chooses batched
    trial = 2 * (1 + TRIAL_STEPS)
    assert auto_modes(engine, method, model, data, trial) == ["batched"] * (1 + TRIAL_STEPS) + ["loop"] * (1 + TRIAL_STEPS)
    assert engine.mode == "batched"
    batched_passes_run_out_of_memory(monkeypatch, above=2)
    expected, _ = reference_jacobian(copy.deepcopy(model), data)
    assert auto_modes(engine, method, model, data, 1 + trial) == ["batched"] * (2 + TRIAL_STEPS) + ["loop"] * (1 + TRIAL_STEPS)
    assert engine.mode == "batched" and engine.chunk == 2
    assert torch.allclose(method.jacobian, expected, atol=1e-6)


def test_auto_takes_loop_when_a_batched_pass_of_one_task_runs_out_of_memory(monkeypatch):
    model, data = make("dropout"), batch("dropout")
    expected, _ = reference_jacobian(copy.deepcopy(model), data)
    batched_passes_run_out_of_memory(monkeypatch)
    engine, method = JacobianEngine("auto"), Recording(len(TASKS))
    with pytest.warns(RuntimeWarning) as caught:
        write_gradients(engine, method, model, data)
    # halved to one task per call, which runs out of memory too
    assert [str(warning.message).split(" (")[0] for warning in caught] == [
        "jacobian.mode=batched ran out of memory with 3 tasks in one call",
        "jacobian.mode=batched ran out of memory with 2 tasks in one call",
        "jacobian.mode=batched is not possible for this model",
    ]
    assert engine.mode == "loop"
    assert torch.allclose(method.jacobian, expected, atol=1e-6)


def test_batched_chosen_by_the_user_raises_when_a_pass_of_one_task_runs_out_of_memory(monkeypatch):
    model, data = make("dropout"), batch("dropout")
    batched_passes_run_out_of_memory(monkeypatch)
    engine = JacobianEngine("batched")
    with pytest.raises(torch.OutOfMemoryError), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        write_gradients(engine, Recording(len(TASKS)), model, data)
    assert [str(warning.message).rsplit("; ", 1)[1] for warning in caught] == ["using jacobian.chunk=2", "using jacobian.chunk=1"]
    assert engine.chunk == 1


@pytest.mark.parametrize("mode", ["loop", "batched"])
def test_the_jacobian_buffer_is_reused_across_steps(mode):
    model, engine = make("dropout"), JacobianEngine(mode)
    first = engine_jacobian(engine, model, batch("dropout", seed=1))
    storage = first.data_ptr()
    second = engine_jacobian(engine, model, batch("dropout", seed=5))
    expected, _ = reference_jacobian(model, batch("dropout", seed=5))
    assert second.data_ptr() == storage
    assert torch.allclose(second, expected, atol=1e-6)


@pytest.mark.parametrize("mode", ["loop", "batched"])
def test_independent_samples_each_get_their_own_jacobian(mode):
    model, data = make("batch_norm"), batch("batch_norm", size=7)
    parts = [{key: value[index] for key, value in data.items()} for index in (slice(0, 3), slice(3, 5), slice(5, 7))]
    reference = copy.deepcopy(model)
    expected = [reference_jacobian(reference, part)[0] for part in parts]
    engine = JacobianEngine(mode)
    representations, losses = [], []
    for part in parts:
        torch.manual_seed(2)
        representation, predictions = engine.forward(model, part["input"])
        representations.append(representation)
        losses.append(stack_losses(TASKS, predictions, part))
    jacobians = engine.jacobians(torch.stack(losses), representations, shared(model))
    assert jacobians.shape == (3, len(TASKS), expected[0].shape[1])
    for rows, target in zip(jacobians, expected):
        assert torch.allclose(rows, target, atol=1e-6)


class MeanOfRows(GramianWeighting):
    def weights(self, gramian, losses):
        return torch.full((len(gramian),), 1 / len(gramian), dtype=gramian.dtype)


class Recording(MeanOfRows):
    """Keeps a copy of the last Jacobian it was given, whole or in blocks of columns."""

    def combine_blocks(self, blocks, losses):
        self.jacobian = torch.cat(blocks, dim=1)
        return super().combine_blocks(blocks, losses)


def step_module(mode, method):
    torch.manual_seed(0)
    model = HardParameterSharing(functools.partial(MLP, hidden=(5,)), MLPHead, TASKS, (1, 2, 2))
    return MultiTaskModule(model, TASKS, method, optimizer=functools.partial(torch.optim.SGD, lr=LR), jacobian=JacobianEngine(mode))


def heads_after_sgd(model, losses):
    """Each head moved along the gradient of its own task's loss."""
    return {
        task.name: [p.detach() - LR * g for p, g in zip(model.task_parameters(task.name), torch.autograd.grad(loss, list(model.task_parameters(task.name)), retain_graph=True))]
        for task, loss in zip(TASKS, losses)
    }


def assert_step(module, shared_expected, heads_expected):
    for parameter, expected in zip(module.model.shared_parameters(), shared_expected):
        assert torch.allclose(parameter, expected, atol=1e-6)
    for task in TASKS:
        for parameter, expected in zip(module.model.task_parameters(task.name), heads_expected[task.name]):
            assert torch.allclose(parameter, expected, atol=1e-6)


@pytest.mark.parametrize("mode", EXACT)
@pytest.mark.parametrize("method_class", [UPGrad, MeanOfRows])
def test_a_training_step_in_each_exact_mode_equals_the_reference_step(mode, method_class):
    module, data = step_module(mode, method_class(len(TASKS))), batch("dropout")
    reference = copy.deepcopy(module.model)
    jacobian, losses = reference_jacobian(reference, data)
    direction = method_class(len(TASKS))(jacobian, losses.detach())
    shared_expected = [p.detach() - LR * d.view_as(p) for p, d in zip(reference.shared_parameters(), direction.split([p.numel() for p in reference.shared_parameters()]))]
    heads_expected = heads_after_sgd(reference, losses)

    one_training_step(module, data)
    assert_step(module, shared_expected, heads_expected)


@pytest.mark.parametrize("method_class", [UPGrad, MeanOfRows])
def test_a_training_step_in_rep_mode_aggregates_the_representation_gradients(method_class):
    module, data = step_module("rep", method_class(len(TASKS))), batch("dropout")
    reference = copy.deepcopy(module.model)
    representation = reference.encode(data["input"])
    leaf = representation.detach().requires_grad_()
    losses = stack_losses(TASKS, reference.decode(leaf), data)
    rows = torch.stack([torch.autograd.grad(loss, leaf, retain_graph=True)[0].flatten() for loss in losses])
    direction = method_class(len(TASKS))(rows, losses.detach())
    gradients = torch.autograd.grad(representation, list(reference.shared_parameters()), direction.view_as(representation))
    shared_expected = [p.detach() - LR * g for p, g in zip(reference.shared_parameters(), gradients)]
    heads_expected = heads_after_sgd(reference, losses)

    one_training_step(module, data)
    assert_step(module, shared_expected, heads_expected)


def test_rep_with_the_mean_of_rows_is_the_mean_loss_gradient():
    module, data = step_module("rep", MeanOfRows(len(TASKS))), batch("dropout")
    reference = copy.deepcopy(module.model)
    losses = stack_losses(TASKS, reference(data["input"]), data)
    gradients = torch.autograd.grad(losses.mean(), list(reference.shared_parameters()))
    one_training_step(module, data)
    for parameter, before, gradient in zip(module.model.shared_parameters(), reference.shared_parameters(), gradients):
        assert torch.allclose(parameter, before - LR * gradient, atol=1e-6)


@pytest.mark.parametrize("mode", ["loop", "batched"])
def test_a_double_sampling_step_gives_the_reference_step(mode):
    module, data = step_module(mode, MoDo(len(TASKS))), batch("dropout", size=7)
    reference = copy.deepcopy(module.model)
    parts = [{key: value[index] for key, value in data.items()} for index in (slice(0, 3), slice(3, 5), slice(5, 7))]
    jacobians, losses = zip(*(reference_jacobian(reference, part) for part in parts))
    direction = MoDo(len(TASKS))(torch.stack(jacobians), torch.stack(losses).detach())
    sizes = [p.numel() for p in reference.shared_parameters()]
    shared_expected = [p.detach() - LR * d.view_as(p) for p, d in zip(reference.shared_parameters(), direction.split(sizes))]
    heads_expected = {
        task.name: [
            p.detach() - LR * g / 3
            for p, g in zip(
                reference.task_parameters(task.name), torch.autograd.grad(sum(loss[k] for loss in losses), list(reference.task_parameters(task.name)), retain_graph=True)
            )
        ]
        for k, task in enumerate(TASKS)
    }
    one_training_step(module, data)
    assert_step(module, shared_expected, heads_expected)


def test_an_unknown_mode_is_named_with_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown jacobian mode 'vmap'; valid modes: \['auto', 'loop', 'batched', 'rep'\]"):
        JacobianEngine("vmap")


def test_rep_needs_a_representation_and_one_sample():
    with pytest.raises(ValueError, match="jacobian.mode=rep needs a model with encode"):
        JacobianEngine("rep").check(general_model(), MeanOfRows(len(TASKS)))
    with pytest.raises(ValueError, match="jacobian.mode=rep takes one sample per step, but MoDo asks for 3"):
        JacobianEngine("rep").check(make("dropout"), MoDo(len(TASKS)))


def test_the_config_chooses_the_mode_and_a_rep_run_trains(tiny_config):
    cfg = tiny_config(["method=mgda", "jacobian.mode=batched", "jacobian.chunk=1"], name="batched")
    _, module = build_datamodule_and_module(cfg)
    assert (module.step.engine.mode, module.step.engine.chunk) == ("batched", 1)
    results = train(tiny_config(["method=mgda", "jacobian.mode=rep"], name="rep"))
    assert 0 <= results["test"]["mean"]["accuracy"] <= 1


def test_rep_mode_refuses_aggregators_whose_state_has_the_size_of_the_gradients():
    with pytest.raises(ValueError, match="jacobian.mode=rep gives gradients of the representation.*MoCo keeps state"):
        JacobianEngine(mode="rep").check(HardParameterSharing(MLP, MLPHead, [ClassificationTask("a", 2)], (1, 2, 2)), MoCo(1))


def count_gradients_reaching_each_head(module):
    """A Counter of the gradients that reach each head's output, updated as the model runs."""
    counts = collections.Counter()

    def watch(name):
        def hook(_module, _inputs, output):
            output.register_hook(lambda _: counts.update([name]))

        return hook

    for name, head in module.model.heads.items():
        head.register_forward_hook(watch(name))
    return counts


@pytest.mark.parametrize("mode", ["loop", "batched", "rep"])
def test_one_backward_pass_per_head_gives_the_heads_gradients_and_every_dl_dz(mode):
    module = step_module(mode, MeanOfRows(len(TASKS)))
    counts = count_gradients_reaching_each_head(module)
    one_training_step(module, batch("dropout"))
    # Each head reads its own copy of z, so one backward pass of the summed losses reaches every
    # head once; a dL_k/dz from an entry of the stacked losses would reach every head K times.
    assert counts == {task.name: 1 for task in TASKS}


@pytest.mark.parametrize("mode", ["loop", "batched", "rep"])
def test_heads_reading_z_itself_each_run_one_pass_for_dl_dz_and_one_for_their_gradients(mode):
    torch.manual_seed(0)
    model = HeadsReadingZ(functools.partial(MLP, hidden=(5,)), MLPHead, TASKS, (1, 2, 2))
    module = MultiTaskModule(model, TASKS, MeanOfRows(len(TASKS)), optimizer=functools.partial(torch.optim.SGD, lr=LR), jacobian=JacobianEngine(mode))
    counts = count_gradients_reaching_each_head(module)
    one_training_step(module, batch("dropout"))
    assert counts == {task.name: 2 for task in TASKS}


def test_gradients_kept_as_grad_have_memory_of_their_own():
    # (a + b).sum() hands one expanded (stride-0) tensor to both a and b; c.sum() an expanded one to c.
    a, b, c, unused = (torch.zeros(3, requires_grad=True) for _ in range(4))
    gradients = torch.autograd.grad((a + b).sum() + 2 * c.sum(), [a, b, c, unused], allow_unused=True)
    assert gradients[0].data_ptr() == gradients[1].data_ptr() and not gradients[0].is_contiguous() and gradients[3] is None
    owned = own_memory(gradients, [a, b, c, unused])
    assert len({gradient.untyped_storage().data_ptr() for gradient in owned}) == 4
    owned[0].mul_(0.5)  # gradient clipping scales each .grad in place
    assert owned[0].tolist() == [0.5] * 3 and owned[1].tolist() == [1.0] * 3
    assert owned[2].tolist() == [2.0] * 3 and owned[3].tolist() == [0.0] * 3
