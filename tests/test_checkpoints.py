"""Checkpoints are read as data: a file that is not one of ours gets one line, and no payload runs."""

import os
from pathlib import Path

import pytest
import torch

from mtl.checkpoints import UnreadableCheckpoint, read_checkpoint
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
