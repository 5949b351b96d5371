"""Checkpoints are read as data: a file that is not one of ours gets one line, and no payload runs."""

import os
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from mtl.build import build_datamodule_and_module
from mtl.checkpoints import CheckpointError, UnreadableCheckpoint, check_resumable, load_model_weights, read_checkpoint
from mtl.train import train
from tests.test_train import run_cli


class Payload:
    """Unpickled with ``weights_only=False``, it would run ``touch <marker>``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def malicious_checkpoint(directory: Path) -> tuple[Path, Path]:
    """A Lightning-shaped checkpoint whose pickle calls ``os.system``, and the file that call would create."""
    marker = directory / "the-payload-ran"
    path = directory / "malicious.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"config": {"seed": 0}}, "payload": Payload(marker)}, path)
    return path, marker


def test_a_pickle_that_calls_a_function_is_refused_without_running_it(tmp_path):
    path, marker = malicious_checkpoint(tmp_path)
    with pytest.raises(UnreadableCheckpoint, match=r"not a readable mtl checkpoint \(it would call (posix|os|nt)\.system; checkpoints are read as data only\)"):
        read_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "the file is empty or cut short"),
        (b"epoch,loss\n0,1.5\n", "not a PyTorch checkpoint"),
        (None, "PytorchStreamReader failed reading zip archive"),
    ],
    ids=["empty", "text", "truncated"],
)
def test_a_file_that_is_no_checkpoint_gets_a_short_reason(tmp_path, content, reason):
    path = tmp_path / "broken.ckpt"
    if content is None:  # the first half of a real checkpoint
        torch.save({"state_dict": {"weight": torch.zeros(1000)}}, tmp_path / "whole.ckpt")
        content = (tmp_path / "whole.ckpt").read_bytes()[:2000]
    path.write_bytes(content)
    with pytest.raises(UnreadableCheckpoint) as raised:
        read_checkpoint(path)
    assert str(raised.value).startswith(f"ckpt_path={path}: not a readable mtl checkpoint ({reason}")
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize(
    ("checkpoint", "reason"),
    [({"weights": torch.zeros(2)}, "it holds no state_dict"), ({"state_dict": {}}, "it holds no run configuration")],
    ids=["no-state-dict", "no-config"],
)
def test_a_torch_file_that_no_mtl_run_wrote_is_refused(tmp_path, checkpoint, reason):
    torch.save(checkpoint, tmp_path / "foreign.ckpt")
    with pytest.raises(UnreadableCheckpoint, match=reason):
        read_checkpoint(tmp_path / "foreign.ckpt")


@pytest.mark.parametrize("entry_point", ["mtl.eval", "mtl.train"])
def test_the_entry_points_refuse_a_malicious_checkpoint_with_one_line(tmp_path, entry_point):
    path, marker = malicious_checkpoint(tmp_path)
    finished = run_cli(entry_point, [f"ckpt_path={path}", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert finished.returncode == 1
    assert not marker.exists()
    assert "Traceback" not in finished.stderr
    assert finished.stderr.strip().splitlines()[-1].startswith(f"ckpt_path={path}: not a readable mtl checkpoint (it would call")


@pytest.fixture
def trained_checkpoint(tiny_config) -> Path:
    """The last checkpoint of one tiny EW run."""
    limits = ["+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1", "+trainer.limit_test_batches=1"]
    cfg = tiny_config(limits, "first")
    train(cfg)
    return Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"


def test_resuming_with_another_method_and_model_lists_every_differing_key(tiny_config, trained_checkpoint):
    cfg = tiny_config(["method=mgda", "model.encoder.hidden=[32]", "optimizer=sgd", f"ckpt_path={trained_checkpoint}"], "resumed")
    with pytest.raises(CheckpointError) as raised:
        train(cfg)
    message = str(raised.value)
    assert message.startswith(f"ckpt_path={trained_checkpoint} was written by a different run (")
    assert "method._target_: mtl.methods.linear.LinearScalarization in the checkpoint, mtl.methods.mgda.MGDA here" in message
    assert "model.encoder.hidden: [256, 256] in the checkpoint, [32] here" in message
    assert "optimizer._target_: torch.optim.Adam in the checkpoint, torch.optim.SGD here" in message
    assert message.endswith(f"or start from its model weights alone with init_from={trained_checkpoint} (fresh optimizer and method state)")
    assert not (Path(cfg.paths.output_dir) / "checkpoints").exists()


def test_resuming_with_another_budget_or_learning_rate_is_allowed(tiny_config, trained_checkpoint):
    checkpoint = read_checkpoint(trained_checkpoint)
    config = OmegaConf.to_container(tiny_config(["trainer.max_epochs=3", "optimizer.lr=0.01", f"ckpt_path={trained_checkpoint}"], "resumed"), resolve=True)
    check_resumable(checkpoint, config, trained_checkpoint)


def test_init_from_starts_a_new_run_of_another_method_from_the_checkpoints_model_weights(tiny_config, trained_checkpoint):
    weights = {name: tensor for name, tensor in read_checkpoint(trained_checkpoint)["state_dict"].items() if name.startswith("model.")}
    cfg = tiny_config(["method=uw", "trainer.max_epochs=0", f"init_from={trained_checkpoint}"], "second")
    datamodule, module = build_datamodule_and_module(cfg)
    load_model_weights(module.model, read_checkpoint(trained_checkpoint, "init_from"), trained_checkpoint)
    for name, tensor in module.state_dict().items():
        if name.startswith("model."):
            assert torch.equal(tensor, weights[name]), name
    # the method's own state is fresh: UW's log-variances start at zero
    assert torch.equal(module.method.log_variances, torch.zeros(2))
    results = train(tiny_config(["method=uw", f"init_from={trained_checkpoint}", "+trainer.limit_train_batches=2"], "third"))
    assert results["global_step"] == 2  # counted from a fresh start


def test_init_from_a_checkpoint_of_another_shape_names_the_tensors(tiny_config, trained_checkpoint):
    with pytest.raises(CheckpointError) as raised:
        train(tiny_config(["model.encoder.hidden=[32]", f"init_from={trained_checkpoint}"], "second"))
    message = str(raised.value)
    assert message.startswith(f"init_from={trained_checkpoint} does not fit this model: ")
    # the checkpoint's second hidden layer is missing here, and the first is narrower
    assert "encoder.layers.3.weight not in this model" in message
    assert "encoder.layers.1.weight (256, 144) in the checkpoint, (32, 144) here" in message


def test_ckpt_path_and_init_from_together_are_refused(tiny_config, trained_checkpoint):
    with pytest.raises(CheckpointError, match="give one of them"):
        train(tiny_config([f"ckpt_path={trained_checkpoint}", f"init_from={trained_checkpoint}"], "second"))
