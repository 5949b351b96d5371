import functools

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from mtl.build import build_datamodule_and_module
from mtl.engine import MultiTaskModule
from mtl.engine.jacobian import task_jacobian
from mtl.methods import GramianWeighting
from mtl.methods.linear import LinearScalarization
from mtl.models import MLP, HardParameterSharing, MLPHead
from mtl.tasks import ClassificationTask, MissingTargetError
from tests.conftest import TINY, compose_config

TASKS = [ClassificationTask("left", 3), ClassificationTask("right", 3)]
LR = 0.1


def make_module(weights=None, method=None):
    torch.manual_seed(0)
    model = HardParameterSharing(functools.partial(MLP, hidden=(4,)), MLPHead, TASKS, (1, 2, 2))
    method = method or LinearScalarization(len(TASKS), weights)
    return MultiTaskModule(model, TASKS, method, optimizer=functools.partial(torch.optim.SGD, lr=LR))


def batch(size=6):
    generator = torch.Generator().manual_seed(1)
    return {
        "input": torch.randn(size, 1, 2, 2, generator=generator),
        "left": torch.randint(0, 3, (size,), generator=generator),
        "right": torch.randint(0, 3, (size,), generator=generator),
    }


def one_training_step(module, data):
    trainer = pl.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(module, train_dataloaders=DataLoader([data], batch_size=None))


@pytest.mark.parametrize("weights", [None, [0.2, 1.5]])
def test_a_step_is_sgd_on_the_weighted_sum_of_task_losses(weights):
    module, data = make_module(weights), batch()
    reference = make_module(weights).model
    predictions = reference(data["input"])
    task_weights = torch.tensor(weights or [0.5, 0.5])
    total = sum(w * task.loss(predictions[task.name], data[task.name]) for w, task in zip(task_weights, TASKS))
    gradients = torch.autograd.grad(total, list(reference.parameters()))
    expected = [p.detach() - LR * g for p, g in zip(reference.parameters(), gradients)]

    one_training_step(module, data)
    for parameter, target in zip(module.model.parameters(), expected):
        assert torch.allclose(parameter, target, atol=1e-6)


def test_a_batch_without_a_task_target_stops_with_the_task_and_keys():
    data = batch()
    del data["right"]
    with pytest.raises(MissingTargetError, match=r"task 'right' needs the batch key 'right', but the batch has keys \['input', 'left'\]"):
        one_training_step(make_module(), data)


def test_a_batch_without_input_names_its_keys():
    data = batch()
    data["image"] = data.pop("input")
    with pytest.raises(KeyError, match=r"the batch has no 'input' key for the model input; its keys are \['image', 'left', 'right'\]"):
        one_training_step(make_module(), data)


class MeanOfRows(GramianWeighting):
    def weights(self, gramian, losses):
        return torch.full((len(gramian),), 1 / len(gramian), dtype=gramian.dtype)


def test_an_aggregator_step_moves_shared_weights_along_the_direction_and_each_head_along_its_task():
    module, data = make_module(method=MeanOfRows(len(TASKS))), batch()
    reference = make_module().model
    predictions = reference(data["input"])
    losses = [task.loss(predictions[task.name], data[task.name]) for task in TASKS]
    shared = list(reference.shared_parameters())
    shared_gradients = [sum(g) / 2 for g in zip(*(torch.autograd.grad(loss, shared, retain_graph=True) for loss in losses))]
    head_gradients = [torch.autograd.grad(loss, list(reference.task_parameters(task.name)), retain_graph=True) for loss, task in zip(losses, TASKS)]

    one_training_step(module, data)
    for parameter, before, gradient in zip(module.model.shared_parameters(), shared, shared_gradients):
        assert torch.allclose(parameter, before - LR * gradient, atol=1e-6)
    for task, gradients in zip(TASKS, head_gradients):
        for parameter, before, gradient in zip(module.model.task_parameters(task.name), reference.task_parameters(task.name), gradients):
            assert torch.allclose(parameter, before - LR * gradient, atol=1e-6)


def test_the_jacobian_rows_are_the_task_gradients_and_unused_parameters_give_zeros():
    weight = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    unused = torch.nn.Parameter(torch.tensor([3.0]))
    losses = torch.stack([(weight**2).sum(), weight[0] * weight[1]])
    jacobian = task_jacobian(losses, [weight, unused])
    assert torch.equal(jacobian, torch.tensor([[2.0, 4.0, 0.0], [2.0, 1.0, 0.0]]))


def test_a_method_that_requires_the_losses_after_the_step_receives_them():
    class Recording(LinearScalarization):
        requires = frozenset({"losses", "losses_after_step"})

        def update(self, losses_after_step):
            self.seen = losses_after_step

    module, data = make_module(method=Recording(len(TASKS))), batch()
    one_training_step(module, data)
    predictions = module.model(data["input"])
    expected = torch.stack([task.loss(predictions[task.name], data[task.name]) for task in TASKS])
    assert torch.allclose(module.method.seen, expected)


def test_a_method_of_neither_kind_is_refused():
    model = HardParameterSharing(MLP, MLPHead, TASKS, (1, 2, 2))
    with pytest.raises(TypeError, match="Identity is neither a mtl.methods.LossWeighting nor a mtl.methods.GradientAggregator"):
        MultiTaskModule(model, TASKS, torch.nn.Identity(), optimizer=torch.optim.SGD)


def test_the_evaluation_loss_is_the_mean_over_samples_however_the_batches_fall():
    module, data = make_module(), batch(7)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    (tested,) = trainer.test(module, DataLoader([data], batch_size=None), verbose=False)
    split = trainer.test(module, DataLoader([{key: value[:5] for key, value in data.items()}, {key: value[5:] for key, value in data.items()}], batch_size=None), verbose=False)[0]
    with torch.no_grad():
        predictions = module.model(data["input"])
    for task in TASKS:
        expected = task.loss(predictions[task.name], data[task.name]).item()
        assert tested[f"test/{task.name}/loss"] == pytest.approx(expected, rel=1e-6)
        assert split[f"test/{task.name}/loss"] == pytest.approx(expected, rel=1e-6)  # 5 and 2 samples weigh 5 and 2


def fit_tiny(tmp_path, overrides, epochs=3):
    cfg = compose_config([*TINY, f"trainer.max_epochs={epochs}", *overrides], tmp_path)
    datamodule, module = build_datamodule_and_module(cfg)
    trainer = pl.Trainer(accelerator="cpu", max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, datamodule=datamodule)
    return module


def test_a_plateau_scheduler_steps_once_an_epoch_on_the_monitored_metric(tmp_path):
    # an improvement must beat the best by 1e9: only the first epoch's value improves (on infinity),
    # so with patience 0 the two later epochs each halve the learning rate
    plateau = ["scheduler=plateau", "scheduler.patience=0", "scheduler.factor=0.5", "+scheduler.threshold=1e9", "+scheduler.threshold_mode=abs"]
    module = fit_tiny(tmp_path / "run", [*plateau, "scheduler_monitor=val/mean/loss", "optimizer.lr=0.01"])
    assert module.optimizers().param_groups[0]["lr"] == pytest.approx(0.01 / 4)
    with pytest.raises(KeyError, match=r"scheduler_monitor=val/mean/lost is not a metric of this run; its metrics are \[.*'val/mean/loss'"):
        fit_tiny(tmp_path / "typo", [*plateau, "scheduler_monitor=val/mean/lost"], epochs=1)
    with pytest.raises(ValueError, match=r"a ReduceLROnPlateau scheduler steps on a metric: set scheduler_monitor"):
        fit_tiny(tmp_path / "none", plateau, epochs=1)


def test_with_baselines_every_validation_epoch_logs_its_delta_m(tmp_path):
    module = fit_tiny(tmp_path / "run", ["baselines={left: {accuracy: 0.5}, right: {accuracy: 0.25}}"], epochs=1)
    logged = module.trainer.callback_metrics
    left, right = float(logged["val/left/accuracy"]), float(logged["val/right/accuracy"])
    assert float(logged["val/delta_m"]) == pytest.approx(100 / 2 * (-(left - 0.5) / 0.5 - (right - 0.25) / 0.25), rel=1e-5)
    with pytest.raises(ValueError, match=r"the baselines lack \['right/accuracy'\]"):
        fit_tiny(tmp_path / "partial", ["baselines={left: {accuracy: 0.5}}"], epochs=1)
