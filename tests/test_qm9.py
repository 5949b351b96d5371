"""QM9 read with PyTorch Geometric from a fixture in its pre-processed release format: complete
molecule graphs with distances, targets standardized over all molecules, errors in Nash-MTL's units,
the seeded 10k/10k split (scaled down), clear errors; graph batches through every Jacobian mode and
a few steps of Nash-MTL's protocol with its Δm%."""

from __future__ import annotations

import copy
import functools
import importlib
import math
import shutil
import sys

import pytest
import torch

from mtl.data.qm9 import QM9, TARGETS, graph_batch
from mtl.engine.jacobian_modes import JacobianEngine
from mtl.engine.step import MultiTaskStep
from mtl.metrics import delta_m
from mtl.models import HardParameterSharing, MLPHead
from mtl.models.mpnn import MPNN
from mtl.train import train
from tests.conftest import compose_config
from tests.engine.test_separate_inputs import gradients
from tests.qm9_fixtures import write_qm9
from tests.test_module import MeanOfRows

HELD_OUT = {"test": 5, "val": 6}


class RecordsGramian(MeanOfRows):
    """Equal weights, keeping the Gramian of the rows it was given (every mode gives it one)."""

    def weights(self, gramian, losses):
        self.gramian = gramian.clone()
        return super().weights(gramian, losses)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_qm9(tmp_path_factory.mktemp("qm9") / "qm9")


@pytest.fixture(scope="module")
def data(root):
    module = QM9(root, held_out=HELD_OUT, batch_size=4)
    module.setup()
    return module


def released(root):
    return torch.load(root / "raw" / "qm9_v3.pt", weights_only=True)


def test_a_molecule_is_its_complete_graph_with_bond_features_and_distances(root, data):
    molecule = released(root)[7]
    graph = data.molecules[7]
    atoms = len(molecule["x"])
    assert torch.equal(graph.x, molecule["x"]) and "y" not in graph
    assert graph.edge_index.shape == (2, atoms * (atoms - 1)) and graph.edge_attr.shape == (atoms * (atoms - 1), 5)
    bonds = {(int(i), int(j)): features for (i, j), features in zip(molecule["edge_index"].T, molecule["edge_attr"])}
    for (i, j), features in zip(graph.edge_index.T.tolist(), graph.edge_attr):
        assert i != j
        assert torch.equal(features[:4], bonds.get((i, j), torch.zeros(4)))
        assert features[4].item() == pytest.approx((molecule["pos"][i] - molecule["pos"][j]).norm().item(), rel=1e-5)


def test_targets_are_standardized_over_all_molecules_and_errors_come_back_in_nash_mtls_units(root, data):
    y = torch.cat([molecule["y"] for molecule in released(root)])
    assert [task.name for task in data.tasks] == list(TARGETS) and data.input_shape == (11,)
    for name in ("mu", "homo", "U0"):
        column = y[:, TARGETS[name].column]
        task = next(task for task in data.tasks if task.name == name)
        assert task.scale == pytest.approx(column.std().item() * (1000.0 if name != "mu" else 1.0), rel=1e-5)  # eV -> meV
        sample = data.splits["test"][0]
        molecule = data.splits["test"].inputs.indices()[0]
        assert sample[name].item() == pytest.approx(((column[molecule] - column.mean()) / column.std()).item(), rel=1e-5)


def test_the_split_holds_out_test_then_validation_molecules_of_a_seeded_shuffle(root, data):
    sizes = {split: len(dataset) for split, dataset in data.splits.items()}
    assert sizes == {"train": 40 - 11, "val": 6, "test": 5}
    indices = {split: list(dataset.inputs.indices()) for split, dataset in data.splits.items()}
    assert sorted(sum(indices.values(), [])) == list(range(40))
    again, other = QM9(root, held_out=HELD_OUT), QM9(root, held_out=HELD_OUT, seed=1)
    again.setup()
    other.setup()
    assert list(again.splits["test"].inputs.indices()) == indices["test"] != list(other.splits["test"].inputs.indices())


def test_the_processed_file_alone_loads_and_a_missing_dataset_names_what_it_needs(root, tmp_path):
    processed = tmp_path / "processed_only"
    shutil.copytree(root / "processed", processed / "processed")
    assert len(QM9(processed, held_out=HELD_OUT).molecules) == 40
    with pytest.raises(FileNotFoundError, match=r"no QM9 at .*nowhere: expected PyTorch Geometric's .*processed/data_v3.pt or its raw \[.*qm9_v3.pt'\]; set data.download=true"):
        QM9(tmp_path / "nowhere")
    with pytest.raises(ValueError, match=r"unknown QM9 targets \['gap'\]; valid choices: \['mu', 'alpha', 'homo'"):
        QM9(root, targets=["mu", "gap"])
    with pytest.raises(ValueError, match=r"held_out=\{'test': 20, 'val': 20\} leaves none of the 40 molecules"):
        QM9(root, held_out={"test": 20, "val": 20})


def test_without_pytorch_geometric_the_graph_modules_name_the_extra(monkeypatch):
    for name in [name for name in sys.modules if name == "torch_geometric" or name.startswith("torch_geometric.")]:
        monkeypatch.setitem(sys.modules, name, None)  # as if it were not installed
    monkeypatch.delitem(sys.modules, "mtl.graphs")
    with pytest.raises(ImportError, match=r"data=qm9 and model=mpnn need PyTorch Geometric .*pip install -e '.\[graph\]'"):
        importlib.import_module("mtl.graphs")


def test_the_mpnn_is_nash_mtls_with_a_linear_head_per_target(data):
    model = HardParameterSharing(MPNN, functools.partial(MLPHead, hidden=[]), data.tasks, data.input_shape)
    assert sum(parameter.numel() for parameter in model.shared_parameters()) == 616_960  # nash-mtl's shared_parameters()
    batch = graph_batch([data.splits["train"][index] for index in range(4)])
    assert {name: tuple(out.shape) for name, out in model(batch["input"]).items()} == dict.fromkeys(TARGETS, (4, 1))


@pytest.mark.parametrize("mode", ["loop", "batched", "rep"])
def test_the_rows_of_a_graph_batch_jacobian_are_the_gradients_of_each_targets_loss(data, mode):
    torch.manual_seed(0)
    model = HardParameterSharing(functools.partial(MPNN, dim=4, edge_hidden=4), functools.partial(MLPHead, hidden=[]), data.tasks[:3], data.input_shape)
    reference = copy.deepcopy(model)
    batch = graph_batch([data.splits["train"][index] for index in range(5)])
    predictions = reference(batch["input"])
    shared = list(reference.shared_parameters())
    if mode == "rep":  # the rows are with respect to the pooled graph representation
        representation = reference.encode(batch["input"])
        shared = [representation]
        predictions = reference.decode(representation)
    expected = torch.stack([gradients(task.loss(predictions[task.name], batch[task.name]), shared) for task in data.tasks[:3]])
    method = RecordsGramian(3)
    MultiTaskStep(model, data.tasks[:3], method, JacobianEngine(mode))(batch, learning_rate=0.1)
    expected = expected.double()  # the Gramian is formed in float64
    assert torch.allclose(method.gramian, expected @ expected.T, rtol=1e-4, atol=1e-8)
    assert not torch.allclose(expected[0], expected[1])


@pytest.mark.parametrize("overrides", [["method=ew"], ["method=mgda"], ["method=nash_mtl", "sam=fmtl"]], ids=["ew", "mgda", "nash_mtl_fmtl"])
def test_a_few_steps_of_nash_mtls_qm9_protocol_report_its_delta_m(root, tmp_path, overrides):
    cfg = compose_config(
        [
            "experiment=qm9_nash",
            f"data.root={root}",
            "data.held_out={test: 5, val: 6}",
            "data.batch_size=8",
            "model.encoder.dim=8",
            "model.encoder.edge_hidden=8",
            "trainer.max_epochs=2",
            "trainer.accelerator=cpu",
            "trainer.enable_progress_bar=false",
            "trainer.enable_model_summary=false",
            "~callbacks.rich_progress_bar",
            *overrides,
        ],
        tmp_path / "run",
    )
    results = train(cfg)
    assert results["global_step"] == 2 * math.ceil(29 / 8)
    assert set(results["test"]) == {*TARGETS, "mean"}
    baselines = dict(cfg.baselines)
    assert results["delta_m"]["test"] == pytest.approx(delta_m(results["test"], baselines, {name: {"mae": False} for name in TARGETS}))
    assert math.isfinite(results["delta_m"]["validation"])
