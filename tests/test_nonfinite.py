"""The non-finite policy: a step with a non-finite task loss, task gradient or update stops the run
with the task and step named (``nonfinite=raise``), or leaves every weight and state as it was
(``nonfinite=skip``), for every method; an aggregator never sees a non-finite input."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from mtl.build import build_datamodule_and_module
from mtl.engine import MultiTaskModule
from mtl.engine.nonfinite import NonFinitePolicy, NonFiniteStep, StateBeforeStep, check_losses
from mtl.engine.step import MultiTaskStep
from mtl.methods.base import NonFiniteRows
from mtl.methods.mgda import MGDA
from mtl.methods.pcgrad import PCGrad
from mtl.methods.rlw import RandomLossWeighting
from mtl.train import train
from tests.conftest import TINY, compose_config
from tests.test_module import TASKS, batch, make_module
from tests.test_train import METHOD_NAMES, REQUIRED_OPTIONS

NAN = float("nan")


class PoisonedGradient(torch.autograd.Function):
    """The identity forward, a NaN gradient backward: a finite loss whose gradient is not."""

    @staticmethod
    def forward(ctx, values):
        return values.clone()

    @staticmethod
    def backward(ctx, gradient):
        return torch.full_like(gradient, NAN)


def poison(task, how):
    """Make ``task``'s loss non-finite (``how="loss"``) or its gradient (``"gradient"``) while
    ``task.poisoned`` is true."""
    original = task.loss
    task.poisoned = False

    def loss(prediction, target):
        if not task.poisoned:
            return original(prediction, target)
        if how == "loss":
            return original(prediction, target) * NAN
        return original(PoisonedGradient.apply(prediction), target)

    task.loss = loss


def test_non_finite_losses_are_named_with_their_values():
    with pytest.raises(NonFiniteStep, match=r"^task 'right' loss is nan$"):
        check_losses(torch.tensor([0.5, NAN]), ["left", "right"])
    with pytest.raises(NonFiniteStep, match=r"^task 'left' loss is inf, task 'right' loss is -inf$"):
        check_losses(torch.tensor([[1.0, 2.0], [float("inf"), -float("inf")]]), ["left", "right"])  # (N, K): two samples
    check_losses(torch.tensor([0.5, 1.0]), ["left", "right"])


@pytest.mark.parametrize("method", [MGDA(2), PCGrad(2)], ids=["gramian weighting", "aggregator"])
def test_an_aggregator_refuses_a_non_finite_row_before_it_computes(method):
    jacobian = torch.tensor([[1.0, 2.0, 3.0], [4.0, NAN, 6.0], [0.0, 1.0, 0.0]])[:2]
    with pytest.raises(NonFiniteRows, match=r"the gradient of rows \[1\] is not finite"):
        method(jacobian, torch.ones(2))
    with pytest.raises(NonFiniteRows, match=r"the loss of rows \[0\] is not finite"):
        method(torch.ones(2, 3), torch.tensor([float("inf"), 1.0]))


@pytest.mark.parametrize("method", [None, MGDA(2), PCGrad(2)], ids=["ew", "mgda", "pcgrad"])
def test_the_step_names_the_task_whose_shared_gradient_is_not_finite(method):
    module = make_module(method=method)
    tasks = [copy.copy(task) for task in TASKS]
    poison(tasks[1], "gradient")
    tasks[1].poisoned = True
    step = MultiTaskStep(module.model, tasks, module.method)
    # a loss weighting backpropagates once, so the update is what is checked
    expected = "the update is not finite" if method is None else r"the shared-parameter gradient of task 'right' is not finite"
    with pytest.raises(NonFiniteStep, match=expected):
        step(batch(), 0.1)


class PoisonOneBatch(pl.Callback):
    """Poisons the losses of batch ``index`` of the first epoch and keeps copies of the weights,
    the optimizer's state and the method's state before and after it."""

    def __init__(self, tasks, index=1):
        self.tasks, self.index, self.states = tasks, index, {}

    def state(self, trainer, module):
        return copy.deepcopy({"model": module.model.state_dict(), "method": module.method.state_dict(), "optimizer": trainer.optimizers[0].state_dict()})

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.current_epoch == 0 and batch_idx == self.index:
            self.states["before"] = self.state(trainer, module)
        for task in self.tasks:
            task.poisoned = trainer.current_epoch == 0 and batch_idx == self.index

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.current_epoch == 0 and batch_idx == self.index:
            self.states["after"] = self.state(trainer, module)


def fit_poisoned(tmp_path, overrides, how="loss", steps=3):
    cfg = compose_config([*TINY, *overrides], tmp_path)
    datamodule, module = build_datamodule_and_module(cfg)
    for task in module.tasks:
        poison(task, how)
    callback = PoisonOneBatch(module.tasks)
    quiet = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False, "enable_model_summary": False}
    trainer = pl.Trainer(accelerator="cpu", max_steps=steps, limit_val_batches=0, callbacks=[callback], **quiet)
    trainer.fit(module, datamodule=datamodule)
    return module, callback.states, trainer


@pytest.mark.parametrize("how", ["loss", "gradient"])
@pytest.mark.parametrize("method", METHOD_NAMES)
def test_a_skipped_step_leaves_weights_optimizer_and_method_state_as_they_were(method, how, tmp_path):
    module, states, trainer = fit_poisoned(tmp_path, [f"method={method}", *REQUIRED_OPTIONS.get(method, []), "nonfinite=skip"], how=how, steps=2)
    before, after = states["before"], states["after"]
    for part in ("model", "method"):  # exactly, the methods' extra state (generators, histories) too
        torch.testing.assert_close(after[part], before[part], rtol=0, atol=0, msg=lambda text, part=part: f"{part} changed in a skipped step: {text}")
    torch.testing.assert_close(after["optimizer"]["state"], before["optimizer"]["state"], rtol=0, atol=0)
    assert module.nonfinite.skipped == 1
    assert trainer.global_step == 2  # the skipped step took no optimizer step; two later ones did
    assert all(torch.isfinite(value).all() for value in module.model.state_dict().values())


@pytest.mark.parametrize(("how", "method", "message"), [
    ("loss", "mgda", r"step 1 \(epoch 0, batch 1, learning rate 0\.001\): task 'left' loss is nan, task 'right' loss is nan"),
    ("gradient", "nash_mtl", r"step 1 \(epoch 0, batch 1, learning rate 0\.001\): the shared-parameter gradient of task 'left', 'right' is not finite"),
    ("gradient", "ew", r"step 1 \(epoch 0, batch 1, learning rate 0\.001\): the update is not finite"),
])
def test_raise_names_the_step_and_the_tasks_before_the_optimizer_steps(how, method, message, tmp_path):
    with pytest.raises(NonFiniteStep, match=message):
        fit_poisoned(tmp_path, [f"method={method}"], how=how)


def test_skip_raises_after_max_skips_in_a_row(tmp_path):
    policy = NonFinitePolicy("skip", max_skips=2)
    policy.on_nonfinite(NonFiniteStep("task 'left' loss is nan"), "step 3")
    policy.on_finite()
    policy.on_nonfinite(NonFiniteStep("task 'left' loss is nan"), "step 5")
    with pytest.raises(NonFiniteStep, match=r"step 6: task 'left' loss is nan; 2 steps in a row were not finite \(nonfinite_max_skips=2\)"):
        policy.on_nonfinite(NonFiniteStep("task 'left' loss is nan"), "step 6")
    assert policy.skipped == 3
    with pytest.raises(ValueError, match=r"nonfinite=ignore is not a policy; choose one of \['raise', 'skip'\]"):
        NonFinitePolicy("ignore")


def test_a_run_that_turns_non_finite_keeps_its_last_finite_checkpoint(tiny_config, monkeypatch):
    cfg = tiny_config(["trainer.max_epochs=2", "method=pcgrad"])
    start_epoch = MultiTaskModule.on_train_epoch_start

    def poison_the_second_epoch(module):
        start_epoch(module)
        for task in module.tasks:
            if not hasattr(task, "poisoned"):
                poison(task, "loss")
            task.poisoned = module.current_epoch == 1

    monkeypatch.setattr(MultiTaskModule, "on_train_epoch_start", poison_the_second_epoch)
    with pytest.raises(NonFiniteStep, match=r"^step \d+ \(epoch 1, batch 0, learning rate 0\.001\): task 'left' loss is nan"):
        train(cfg)
    checkpoints = sorted(Path(cfg.paths.output_dir, "checkpoints").glob("*.ckpt"))
    assert {path.name for path in checkpoints} >= {"last.ckpt"}
    for path in checkpoints:
        state = torch.load(path, weights_only=True)
        assert state["epoch"] == 0
        assert all(torch.isfinite(value).all() for value in state["state_dict"].values() if isinstance(value, torch.Tensor) and value.is_floating_point())


@pytest.mark.parametrize("method", ["ew", "pcgrad", "mgda", "nash_mtl"])
def test_the_cli_stops_a_diverging_run_with_one_line(method, tmp_path):
    diverging = ["optimizer=sgd", "optimizer.lr=1e6", f"method={method}", "data.pairs_per_digit={train: 10, val: 1, test: 1}", "trainer.max_epochs=1"]
    quiet = ["trainer.enable_progress_bar=false", "~callbacks.rich_progress_bar", f"hydra.run.dir={tmp_path}", f"paths.data_dir={tmp_path / 'data'}"]
    run = subprocess.run([sys.executable, "-m", "mtl.train", *diverging, *quiet], capture_output=True, text=True, timeout=300)
    assert run.returncode != 0
    assert "Traceback" not in run.stderr
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("step ") and "learning rate 1e+06" in last and ("is not finite" in last or "loss is nan" in last), last
    assert not list(tmp_path.glob("**/*.ckpt")), "no checkpoint of non-finite weights"


def test_a_non_finite_step_puts_back_the_batchnorm_statistics_and_the_method_state():
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.BatchNorm1d(3))
    method = RandomLossWeighting(2)
    before = StateBeforeStep(model, method)
    model.train()(torch.randn(8, 2))  # moves the running statistics
    method(torch.ones(2))  # draws from its generator
    before.restore()
    fresh = torch.nn.BatchNorm1d(3)
    torch.testing.assert_close(model[1].running_mean, fresh.running_mean)
    torch.testing.assert_close(model[1].running_var, fresh.running_var)
    assert model[1].num_batches_tracked == 0
    torch.testing.assert_close(method(torch.ones(2)), RandomLossWeighting(2)(torch.ones(2)))
