"""MMoE, CGC, PLE, DSelect-k, cross-stitch and MTAN: output shapes, gates on the simplex, the
declared shared/task split against which losses reach each parameter, each architecture's forward
against its paper's formula, and training runs with a loss weighting, an aggregator and F-MTL."""

import functools
import json
import math

import pytest
import torch

from mtl.callbacks import AttentionMasks, ExpertUtilization
from mtl.models import MLP, MTAN, PLE, CrossStitch, DSelectK, LeNet, MLPHead, MMoE, ResNet
from mtl.models.dselect_k import DSelectGate, smooth_step
from mtl.tasks import ClassificationTask, RegressionTask
from mtl.train import train
from tests.conftest import TINY, compose_config

TASKS = [ClassificationTask("a", 3), RegressionTask("b", 2), ClassificationTask("c", 2)]
INPUT_SHAPE = (1, 2, 3)
BATCH = 64
TINY_SYNTHETIC = [
        "data.samples={train: 64, val: 32, test: 32}",
        "data.dimension=8",
        "data.batch_size=32",
        "trainer.max_epochs=1",
        "trainer.accelerator=cpu",
        "trainer.enable_model_summary=false",
        "trainer.enable_progress_bar=false",
        "~callbacks.rich_progress_bar",
]
"""Overrides that shrink experiment=synthetic_mmoe to two steps."""

ARCHITECTURES = {
    "mmoe": functools.partial(MMoE, num_experts=3),
    "cgc": functools.partial(PLE, levels=1, shared_experts=2, task_experts=1),
    "ple": functools.partial(PLE, levels=2, shared_experts=1, task_experts=2),
    "ple3": functools.partial(PLE, levels=3, shared_experts=1, task_experts=1),
    "dselect_k": functools.partial(DSelectK, num_experts=4, k=2),
    "cross_stitch": CrossStitch,
    "mtan": MTAN,
}
GATED = [name for name in ARCHITECTURES if name not in ("cross_stitch", "mtan")]
CONVOLUTIONAL = {"mtan": (functools.partial(ResNet, widths=(4, 8), blocks=2), (1, 8, 8))}
"""The encoder and input shape of the architectures that need feature maps; the others get an MLP."""


def build(name):
    torch.manual_seed(0)
    encoder, shape = CONVOLUTIONAL.get(name, (functools.partial(MLP, hidden=(8, 8)), INPUT_SHAPE))
    return ARCHITECTURES[name](encoder, functools.partial(MLPHead, hidden=(8,)), TASKS, shape)


def inputs(name=None):
    shape = CONVOLUTIONAL[name][1] if name in CONVOLUTIONAL else INPUT_SHAPE
    return torch.randn(BATCH, *shape, generator=torch.Generator().manual_seed(1))


def reached_by(model, task, x):
    """The ids of the parameters that the loss of ``task`` alone gives a nonzero gradient."""
    output = model(x)[task.name]
    parameters = list(model.parameters())
    gradients = torch.autograd.grad((output**2).sum(), parameters, allow_unused=True)
    return {id(parameter) for parameter, gradient in zip(parameters, gradients) if gradient is not None and gradient.abs().sum() > 0}


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_every_task_gets_an_output_of_its_width(name):
    outputs = build(name)(inputs(name))
    assert {task: tuple(output.shape) for task, output in outputs.items()} == {task.name: (BATCH, task.num_outputs) for task in TASKS}


@pytest.mark.parametrize("name", GATED)
def test_the_gates_weigh_the_experts_on_the_simplex(name):
    for weights in build(name).gate_weights(inputs()).values():
        assert torch.all(weights >= 0) and torch.allclose(weights.sum(dim=-1), torch.ones(BATCH))


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_shared_and_task_parameters_split_the_model_by_the_losses_that_reach_them(name):
    model = build(name)
    shared = {id(parameter) for parameter in model.shared_parameters()}
    own = {task.name: {id(parameter) for parameter in model.task_parameters(task.name)} for task in TASKS}
    every = [id(parameter) for parameter in model.parameters()]
    assert sorted([*shared, *(i for ids in own.values() for i in ids)]) == sorted(every)  # a partition
    reached = {task.name: reached_by(model, task, inputs(name)) for task in TASKS}
    for task in TASKS:
        others = set().union(*(reached[other.name] for other in TASKS if other is not task))
        assert own[task.name] <= reached[task.name] and not own[task.name] & others
    assert all(sum(i in reached[task.name] for task in TASKS) >= 2 for i in shared)


def test_ple_declares_shared_what_its_shared_gate_mixes_into_every_task():
    model = build("ple")
    first, last = model.levels
    shared = {id(parameter) for parameter in model.shared_parameters()}
    assert {id(parameter) for parameter in first.task_experts["a"].parameters()} <= shared
    assert not {id(parameter) for parameter in last.task_experts["a"].parameters()} & shared


def test_an_mmoe_output_is_its_tower_on_the_gate_weighted_sum_of_the_experts():
    model, x = build("mmoe"), inputs()
    weights = torch.softmax(x.flatten(start_dim=1) @ model.gates["a"].weight.T, dim=-1)
    mixed = sum(weights[:, [index]] * expert(x) for index, expert in enumerate(model.experts))
    assert torch.allclose(model(x)["a"], model.heads["a"](mixed), atol=1e-6)


@pytest.mark.parametrize(
    ("model", "options"),
    [
        ("mmoe", ["method=ew"]),
        ("cgc", ["method=ew"]),
        ("ple", ["method=ew"]),
        ("dselect_k", ["method=ew"]),
        ("cross_stitch", ["method=mgda"]),
        ("mmoe", ["method=mgda"]),
        ("ple", ["method=pcgrad"]),
        ("mmoe", ["sam=fmtl"]),
        ("ple", ["sam=fmtl", "method=mgda"]),
    ],
)
def test_each_architecture_trains_with_weightings_aggregators_and_fmtl(model, options, tmp_path):
    results = train(compose_config(["experiment=synthetic_mmoe", f"model={model}", *options, *TINY_SYNTHETIC], tmp_path / "run"))
    assert results["global_step"] == 2
    assert all(math.isfinite(value) for metrics in results["test"].values() for value in metrics.values())


def test_the_expert_utilization_is_the_mean_of_the_gate_weights_over_the_batches():
    model, x = build("mmoe"), inputs()
    callback = ExpertUtilization(batches=2)
    batches = [{"input": x[:40]}, {"input": x[40:]}, {"input": torch.full_like(x[:3], 1e3)}]  # the third is past `batches`
    utilization = callback.measure(model, batches, torch.device("cpu"))
    for name, weights in model.gate_weights(x).items():
        assert torch.allclose(utilization[name], weights.double().mean(dim=0), atol=1e-6)
    assert model.training  # back in the mode it was in


def test_a_run_with_the_expert_utilization_callback_saves_the_plot_and_matrix(tmp_path):
    train(compose_config(["experiment=synthetic_mmoe", "callbacks=expert_utilization", *TINY_SYNTHETIC], tmp_path / "run"))
    matrix = json.loads((tmp_path / "run" / "expert_utilization.json").read_text())
    assert set(matrix) == {"y1", "y2"} and all(len(row) == 8 and abs(sum(row) - 1) < 1e-6 for row in matrix.values())
    assert (tmp_path / "run" / "expert_utilization.png").stat().st_size > 0


def test_the_expert_utilization_callback_refuses_a_model_without_gates(tmp_path):
    cfg = compose_config(["callbacks=expert_utilization", "trainer.max_epochs=1", "trainer.accelerator=cpu", "~callbacks.rich_progress_bar"], tmp_path / "run")
    with pytest.raises(TypeError, match="ExpertUtilization needs a model with gate_weights"):
        train(cfg)


def test_the_smooth_step_is_the_papers_cubic_between_its_flat_parts():
    t = torch.tensor([-1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0])
    expected = torch.tensor([0.0, 0.0, -2 * (-0.25) ** 3 + 1.5 * (-0.25) + 0.5, 0.5, -2 * 0.25**3 + 1.5 * 0.25 + 0.5, 1.0, 1.0])
    assert torch.allclose(smooth_step(t, gamma=1.0), expected)


def test_a_single_expert_selector_puts_its_weight_on_the_simplex_for_any_logits():
    gate = DSelectGate(3, 8, k=3, per_example=True)
    with torch.no_grad():
        gate.selectors.weight.mul_(400)  # logits far beyond ±γ/2 for some inputs, inside for others
    outputs, weights = gate.selector_outputs(torch.randn(16, 3))
    assert torch.allclose(outputs.sum(dim=-1), torch.ones(16, 3)) and torch.allclose(weights.sum(dim=-1), torch.ones(16))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dselect_k_converges_to_exactly_the_k_experts_of_a_sparse_target(seed):
    # the experts are the basis vectors; the target mixes experts 2 and 5: the static gate must end
    # with exact zeros everywhere else (its smooth steps saturated), and the target's weights
    torch.manual_seed(seed)
    gate = DSelectGate(1, 8, k=2, gamma=1.0, per_example=False)
    target = torch.tensor([0.0, 0.0, 0.3, 0.0, 0.0, 0.7, 0.0, 0.0])
    optimizer = torch.optim.Adam(gate.parameters(), lr=0.05)
    for _ in range(1500):
        optimizer.zero_grad()
        ((gate(torch.zeros(1, 1))[0] - target) ** 2).sum().backward()
        optimizer.step()
    weights = gate(torch.zeros(1, 1))[0].detach()
    assert torch.equal(weights == 0, target == 0) and torch.allclose(weights, target, atol=1e-4)


def test_dselect_k_refuses_a_number_of_experts_that_is_no_power_of_two():
    with pytest.raises(ValueError, match="model.num_experts must be a power of two .* got 6"):
        DSelectGate(4, 6)


def test_a_cross_stitch_network_with_identity_units_is_one_independent_network_per_task():
    model, x = ARCHITECTURES["cross_stitch"](functools.partial(MLP, hidden=(8, 8)), MLPHead, TASKS, INPUT_SHAPE, alpha_same=1.0), inputs()
    for task in TASKS:
        assert torch.allclose(model(x)[task.name], model.heads[task.name](model.encoders[task.name](x)), atol=1e-6)


def test_cross_stitch_units_mix_the_tasks_activations_after_every_stage():
    model, x = build("cross_stitch"), inputs()
    assert len(model.units) == 2 and torch.allclose(model.units[0], torch.tensor([[0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.05, 0.05, 0.9]]))
    names = [task.name for task in TASKS]
    first = [model.encoders[name].stages()[0](x) for name in names]
    mixed = [sum(model.units[0][k, j] * first[j] for j in range(len(names))) for k in range(len(names))]
    second = [model.encoders[name].stages()[1](mixed[k]) for k, name in enumerate(names)]
    expected = {name: model.heads[name](sum(model.units[1][k, j] * second[j] for j in range(len(names)))) for k, name in enumerate(names)}
    for name, output in model(x).items():
        assert torch.allclose(output, expected[name], atol=1e-6)


ENCODERS = {
    "mlp": (functools.partial(MLP, hidden=(8, 8)), INPUT_SHAPE),
    "mlp-no-hidden": (functools.partial(MLP, hidden=()), INPUT_SHAPE),
    "lenet": (LeNet, (1, 36, 36)),
    "resnet": (ResNet, (1, 12, 12)),
    "resnet18-like": (functools.partial(ResNet, widths=(8, 16), blocks=2, stem="imagenet", features=10), (1, 32, 32)),
}


@pytest.mark.parametrize("name", ENCODERS)
def test_an_encoders_stages_compose_to_its_forward(name):
    factory, shape = ENCODERS[name]
    encoder = factory(shape).eval()
    x = torch.randn(3, *shape, generator=torch.Generator().manual_seed(0))
    output = x
    for stage in encoder.stages():
        output = stage(output)
    assert torch.allclose(output, encoder(x))


@pytest.mark.parametrize("name", [name for name in ENCODERS if not name.startswith("mlp")])
def test_a_convolutional_encoders_feature_stages_end_in_feature_maps_and_compose_to_its_forward(name):
    factory, shape = ENCODERS[name]
    encoder = factory(shape).eval()
    x = torch.randn(3, *shape, generator=torch.Generator().manual_seed(0))
    stages, flatten = encoder.feature_stages()
    output = x
    for stage in stages:
        output = stage(output)
        assert output.dim() == 4
    assert torch.allclose(flatten(output), encoder(x))


def test_an_mtan_task_reads_its_masks_on_the_shared_stage_outputs_as_the_paper_writes_them():
    # two stages: a_k^1 = g_k^1(u^1) ⊙ p^1, a_k^2 = g_k^2([u^2, pool(f^1(a_k^1))]) ⊙ p^2, then the head
    model, x = build("mtan"), inputs("mtan")
    (first, second), flatten = model.encoder.feature_stages()
    u1 = first[:-1](x)
    p1 = first[-1](u1)
    u2 = second[:-1](p1)
    p2 = second[-1](u2)
    for task in TASKS:
        g1, g2 = model.attention[task.name]
        a1 = g1(u1) * p1
        a2 = g2(torch.cat([u2, torch.nn.functional.max_pool2d(model.blocks[0](a1), 2)], dim=1)) * p2
        assert torch.allclose(model(x)[task.name], model.heads[task.name](flatten(a2)), atol=1e-5)


def test_mtan_masks_lie_in_the_unit_interval_shaped_like_the_stage_outputs():
    model, x = build("mtan"), inputs("mtan")
    stages, _ = model.encoder.feature_stages()
    shapes, output = [], x
    for stage in stages:
        output = stage(output)
        shapes.append(output.shape)
    for masks in model.attention_masks(x).values():
        assert [mask.shape for mask in masks] == shapes
        assert all(torch.all((mask > 0) & (mask < 1)) for mask in masks)


def test_mtan_with_masks_of_one_is_the_shared_network():
    model, x = build("mtan"), inputs("mtan")
    with torch.no_grad():
        for attention in model.attention.values():
            for mask in attention:
                mask[-2].weight.zero_()  # the last BatchNorm: sigmoid(0 * z + 30) = 1 in float32
                mask[-2].bias.fill_(30.0)
    for task in TASKS:
        assert torch.allclose(model(x)[task.name], model.heads[task.name](model.encoder(x)))


@pytest.mark.parametrize(
    ("encoder", "error", "message"),
    [
        (functools.partial(MLP, hidden=(8,)), TypeError, "MLP computes no feature maps"),
        (functools.partial(ResNet, widths=(4, 8), blocks=1), ValueError, "stage 1 of ResNet is one layer; .* blocks >= 2"),
    ],
)
def test_mtan_refuses_an_encoder_it_cannot_attend_to(encoder, error, message):
    with pytest.raises(error, match=message):
        MTAN(encoder, MLPHead, TASKS, (1, 8, 8))


@pytest.mark.parametrize("options", [["method=ew"], ["method=mgda"], ["method=ew", "sam=fmtl"]])
def test_mtan_trains_with_a_weighting_an_aggregator_and_fmtl(options, tmp_path):
    results = train(compose_config([*TINY, "model=mtan", "model.encoder.widths=[4,8]", *options], tmp_path / "run"))
    assert results["global_step"] > 0
    assert all(math.isfinite(value) for metrics in results["test"].values() for value in metrics.values())


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_an_unknown_task_is_named_with_the_models_tasks(name):
    with pytest.raises(KeyError, match=r"no task named 'd'; the model's tasks are \['a', 'b', 'c'\]"):
        list(build(name).task_parameters("d"))


def test_the_attention_summary_is_the_mean_of_each_stages_mask_over_the_batches():
    model, x = build("mtan"), inputs("mtan")
    batches = [{"input": x[:40]}, {"input": x[40:]}, {"input": torch.full_like(x[:3], 1e3)}]  # the third is past `batches`
    means, first = AttentionMasks(batches=2).measure(model, batches, torch.device("cpu"))
    model.eval()
    with torch.no_grad():
        masks = model.attention_masks(x)
    for name, stages in masks.items():
        assert torch.allclose(means[name], torch.stack([mask.double().mean() for mask in stages]), atol=1e-6)
        assert all(torch.allclose(sample, mask[0].mean(dim=0)) for sample, mask in zip(first[name], stages))


def test_a_run_with_the_attention_masks_callback_saves_the_plot_and_means(tmp_path):
    train(compose_config([*TINY, "model=mtan", "model.encoder.widths=[4,8]", "callbacks=attention_masks"], tmp_path / "run"))
    means = json.loads((tmp_path / "run" / "attention_masks.json").read_text())
    assert set(means) == {"left", "right"} and all(len(values) == 2 and all(0 < value < 1 for value in values) for values in means.values())
    assert (tmp_path / "run" / "attention_masks.png").stat().st_size > 0


def test_the_attention_masks_callback_refuses_a_model_without_attention(tmp_path):
    cfg = compose_config([*TINY, "callbacks=attention_masks"], tmp_path / "run")
    with pytest.raises(TypeError, match="AttentionMasks needs a model with attention_masks"):
        train(cfg)
