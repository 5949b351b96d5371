"""Every config file composes with the real train.yaml, and each component it names can be built."""

from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException, MissingConfigException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from mtl.build import build_datamodule_and_module, build_trainer
from mtl.train import CONFIG_DIR
from tests.celeba_fixtures import write_celeba
from tests.conftest import SHARED_ADULT, compose_config
from tests.dense_fixtures import write_cityscapes, write_nyuv2
from tests.office_fixtures import write_office
from tests.qm9_fixtures import write_qm9

GROUP_OPTIONS = sorted(
    (path.parent.name, path.stem)
    for path in Path(CONFIG_DIR).glob("*/*.yaml")
    if path.parent.name != "hydra"
)


NEEDS = {
    ("model", "lenet"): ["data=multimnist"],
    ("method", "stl"): ["method.task=left"],
    ("method", "krum"): ["experiment=celeba_famo", "data.root={celeba}"],
    ("method", "trimmed_mean"): ["experiment=celeba_famo", "data.root={celeba}"],
    ("data", "adult"): [f"data.root={SHARED_ADULT}"],
    ("experiment", "adult_mmoe"): [f"data.root={SHARED_ADULT}"],
    ("data", "nyuv2"): ["data.root={nyuv2}"],
    ("data", "cityscapes"): ["data.root={cityscapes}"],
    ("model", "segnet"): ["data=nyuv2", "data.root={nyuv2}"],
    ("model", "segnet_mtan"): ["data=nyuv2", "data.root={nyuv2}"],
    ("experiment", "nyuv2_segnet_mtan"): ["data.root={nyuv2}"],
    ("experiment", "cityscapes_segnet_mtan"): ["data.root={cityscapes}"],
    ("data", "celeba"): ["data.root={celeba}"],
    ("experiment", "celeba_famo"): ["data.root={celeba}"],
    ("baselines", "nyuv2_stl"): ["data=nyuv2", "data.root={nyuv2}"],
    ("baselines", "cityscapes_stl"): ["data=cityscapes", "data.root={cityscapes}"],
    ("baselines", "qm9_stl"): ["data=qm9", "data.root={qm9}", "data.held_out={{test: 5, val: 5}}"],
    ("data", "qm9"): ["data.root={qm9}", "data.held_out={{test: 5, val: 5}}"],
    ("model", "mpnn"): ["data=qm9", "data.root={qm9}", "data.held_out={{test: 5, val: 5}}"],
    ("experiment", "qm9_nash"): ["data.root={qm9}", "data.held_out={{test: 5, val: 5}}"],
    ("data", "office31"): ["data.root={office31}", "data.splits={office31}/data_txt"],
    ("experiment", "office31_libmtl"): ["data.root={office31}", "data.splits={office31}/data_txt"],
    ("data", "office_home"): ["data.root={office_home}"],
    ("experiment", "office_home_libmtl"): ["data.root={office_home}"],
}
"""Options that do not fit the default experiment, with what they need (LeNet needs a larger canvas,
single-task training the name of its task, Adult the shared files, the dense benchmarks, SegNet,
CelebA and Office fixtures in the releases' format: ``{nyuv2}``, ``{cityscapes}``, ``{celeba}``,
``{office31}``, ``{office_home}`` and ``{qm9}`` are their roots)."""


@pytest.fixture(scope="module")
def fixture_roots(tmp_path_factory):
    writers = {
        "nyuv2": write_nyuv2,
        "cityscapes": write_cityscapes,
        "celeba": write_celeba,
        "qm9": write_qm9,
        "office31": lambda root: write_office(root)[0],
        "office_home": lambda root: write_office(root, "office_home")[0],
    }
    return {name: write(tmp_path_factory.mktemp(name)) for name, write in writers.items()}


@pytest.mark.parametrize(("group", "option"), GROUP_OPTIONS, ids=[f"{g}={o}" for g, o in GROUP_OPTIONS])
def test_every_group_option_composes_and_builds(group, option, tmp_path, fixture_roots):
    needs = [override.format(**fixture_roots) for override in NEEDS.get((group, option), [])]
    cfg = compose_config([f"{group}={option}", *needs], tmp_path / "run")
    if group in ("optimizer", "scheduler"):
        optimizer = instantiate(cfg.optimizer)([torch.nn.Parameter(torch.zeros(1))])
        if cfg.get("scheduler"):
            instantiate(cfg.scheduler)(optimizer)
    elif group in ("logger", "callbacks", "trainer"):
        if cfg.trainer.accelerator == "gpu" and not torch.cuda.is_available():
            pytest.skip("composed; building a GPU trainer needs a GPU, and none is present")
        build_trainer(cfg)
    else:
        datamodule, module = build_datamodule_and_module(cfg)
        assert [task.name for task in module.tasks] == [task.name for task in datamodule.tasks]


def test_the_eval_config_composes(tmp_path):
    cfg = compose_config(["ckpt_path=some.ckpt"], tmp_path / "eval", config_name="eval")
    assert cfg.ckpt_path == "some.ckpt" and cfg.trainer._target_ == "pytorch_lightning.Trainer"


def test_overrides_reach_the_components(tmp_path):
    cfg = compose_config(["model=lenet", "data=multimnist", "trainer.max_epochs=5", "seed=3"], tmp_path / "run")
    assert cfg.model.encoder._target_ == "mtl.models.LeNet"
    assert (cfg.trainer.max_epochs, cfg.seed, cfg.data.shuffle_seed) == (5, 3, 3)


def test_an_unknown_option_names_it_and_lists_the_valid_ones(tmp_path):
    with pytest.raises(MissingConfigException) as error:
        compose_config(["method=pcgradd"], tmp_path / "run")
    message = str(error.value)
    assert "Could not find 'method/pcgradd'" in message and "Available options in 'method'" in message and "ew" in message


def test_an_unknown_key_is_named(tmp_path):
    with pytest.raises(ConfigCompositionException, match="Could not override 'trainer.max_epoch'"):
        compose_config(["trainer.max_epoch=3"], tmp_path / "run")


def learning_rates(cfg, epochs):
    """The learning rate of each training epoch under the config's optimizer and scheduler."""
    optimizer = instantiate(cfg.optimizer)([torch.nn.Parameter(torch.zeros(1))])
    scheduler = instantiate(cfg.scheduler)(optimizer)
    rates = []
    for _ in range(epochs):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()  # the epoch's steps (no gradients: the weights stay)
        scheduler.step()  # once per epoch, at its end, as MultiTaskModule does
    return rates


def test_the_sener_koltun_protocol_has_their_schedule_input_and_network(tmp_path):
    cfg = compose_config(["experiment=multimnist_sener_koltun"], tmp_path / "run")
    rates = learning_rates(cfg, cfg.trainer.max_epochs)
    # their code multiplies the lr by 0.85 at the start of every epoch with (epoch + 1) % 10 == 0
    expected = [0.05 * 0.85 ** ((epoch + 1) // 10) for epoch in range(100)]
    assert rates == pytest.approx(expected)
    assert (cfg.data.batch_size, cfg.optimizer.momentum, cfg.optimizer._target_) == (256, 0.9, "torch.optim.SGD")
    datamodule, module = build_datamodule_and_module(cfg)
    assert datamodule.input_shape == (1, 28, 28)
    assert module.model.encoder.projection[0].in_features == 320


def test_the_pareto_mtl_protocol_has_their_schedule_and_network(tmp_path):
    cfg = compose_config(["experiment=multimnist_pareto_mtl"], tmp_path / "run")
    rates = learning_rates(cfg, cfg.trainer.max_epochs)
    # their MultiStepLR([15, 30, ..., 90]) steps before each epoch: epoch e trains at the rate after e + 1 steps
    assert rates == pytest.approx([1e-3 * 0.5 ** sum(epoch + 1 >= m for m in (15, 30, 45, 60, 75, 90)) for epoch in range(100)])
    _, module = build_datamodule_and_module(cfg)
    # conv 9x9 1->10 (820), conv 5x5 10->20 (5,020), Linear 500->50 (25,050); heads Linear 50->10 (510 each)
    assert sum(p.numel() for p in module.model.shared_parameters()) == 820 + 5020 + 25050
    assert [sum(p.numel() for p in module.model.task_parameters(name)) for name in ("left", "right")] == [510, 510]


MULTIMNIST_EXPERIMENTS = ["multidigits", "multimnist", "multimnist_sener_koltun", "multimnist_pareto_mtl", "multimnist_fmtl", "multimnist_fmtl_cpu"]


@pytest.mark.parametrize("experiment", MULTIMNIST_EXPERIMENTS)
def test_digit_experiments_run_fmtl_with_the_joint_norm_of_its_multimnist_script(experiment, tmp_path):
    assert compose_config([f"experiment={experiment}", "sam=fmtl"], tmp_path / "run").sam.norm == "joint"


def test_fmtl_without_an_experiment_normalizes_separately_and_the_command_line_wins(tmp_path):
    assert compose_config(["sam=fmtl"], tmp_path / "run").sam.norm == "separate"
    assert compose_config(["experiment=multimnist", "sam=fmtl", "sam.norm=separate"], tmp_path / "run").sam.norm == "separate"


def step_settings(cfg):
    """What the official F-MTL MultiMNIST step is made of: optimizer, batch and perturbation."""
    return (cfg.optimizer._target_, cfg.optimizer.lr, cfg.optimizer.weight_decay, cfg.data.batch_size, cfg.data.normalize, OmegaConf.to_container(cfg.sam))


def test_the_fmtl_protocol_is_the_official_multimnist_one_and_its_cpu_twin_takes_the_same_step(tmp_path):
    cfg = compose_config(["experiment=multimnist_fmtl", "sam=fmtl"], tmp_path / "run")
    assert step_settings(cfg)[:5] == ("torch.optim.Adam", 1e-3, 0.0, 256, None)
    assert {key: cfg.sam[key] for key in ("rho", "adaptive", "eta", "norm", "combine")} == {"rho": 2.0, "adaptive": True, "eta": 0.0, "norm": "joint", "combine": "sum"}
    assert (cfg.trainer.max_epochs, cfg.data.splits_from, cfg.model.encoder.stem, cfg.model.encoder.features, list(cfg.model.head.hidden)) == (200, "official", "imagenet", 100, [])
    cpu = compose_config(["experiment=multimnist_fmtl_cpu", "sam=fmtl"], tmp_path / "cpu")
    assert step_settings(cpu) == step_settings(cfg)
    assert cpu.model.encoder.dropout == 0.0 and cpu.data.splits_from == "test_set"
