"""CelebA read from a fixture in the release's format (both layouts): images, the 40 labels and the
partition as the files give them, clear errors, and a few steps of FAMO's protocol."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from mtl.data import CelebA
from mtl.train import train
from tests.celeba_fixtures import ATTRIBUTES, SPLITS, write_celeba
from tests.conftest import compose_config


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_celeba(tmp_path_factory.mktemp("celeba"))


def file_labels(root, name):
    lines = (root / "list_attr_celeba.txt").read_text().splitlines()
    row = next(line.split() for line in lines[2:] if line.startswith(name))
    return [int(value == "1") for value in row[1:]]


def test_a_sample_is_its_jpeg_resized_bilinearly_in_the_unit_range_with_its_forty_labels(root):
    data = CelebA(str(root))
    data.setup()
    sample = data.splits["train"][1]  # the second training image, 000002.jpg
    with Image.open(root / "img_align_celeba" / "000002.jpg") as image:
        expected = torch.from_numpy(np.asarray(image.convert("RGB").resize((64, 64), Image.BILINEAR), dtype=np.float32) / 255).permute(2, 0, 1)
    assert data.input_shape == (3, 64, 64) and torch.equal(sample["input"], expected)
    assert [task.name for task in data.tasks] == list(ATTRIBUTES)
    assert [sample[name].tolist() for name in ATTRIBUTES] == [[value] for value in file_labels(root, "000002.jpg")]


def test_the_splits_follow_the_partition_file_and_both_layouts_read_the_same(root, tmp_path):
    data, release = CelebA(str(root)), CelebA(str(write_celeba(tmp_path / "release", layout="release")))
    for module in (data, release):
        module.setup()
        assert {split: len(module.splits[split]) for split in ("train", "val", "test")} == {"train": SPLITS.count(0), "val": SPLITS.count(1), "test": SPLITS.count(2)}
    assert data.splits["test"].files == ["000007.jpg", "000008.jpg"]
    assert torch.equal(data.splits["val"][0]["input"], release.splits["val"][0]["input"])


def test_a_subset_of_attributes_is_a_subset_of_tasks_and_an_unknown_one_lists_the_valid(root):
    data = CelebA(str(root), attributes=["Smiling", "Male"])
    data.setup()
    assert [task.name for task in data.tasks] == ["Smiling", "Male"]
    assert data.splits["train"][0]["Male"].item() == file_labels(root, "000001.jpg")[ATTRIBUTES.index("Male")]
    with pytest.raises(ValueError, match=r"unknown CelebA attributes \['Smiley'\]; valid choices: \['5_o_Clock_Shadow'"):
        CelebA(str(root), attributes=["Smiley"])


def test_a_missing_or_malformed_release_is_named(root, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no CelebA at .*nowhere: expected .*img_align_celeba, .*list_attr_celeba.txt.*; or .*Anno/list_attr_celeba.txt"):
        CelebA(str(tmp_path / "nowhere"))
    broken = write_celeba(tmp_path / "broken")
    lines = (broken / "list_attr_celeba.txt").read_text().splitlines()
    lines[3] = lines[3].replace("-1", "0", 1)
    (broken / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"list_attr_celeba.txt:4: expected an image name and 40 values of 1 or -1"):
        CelebA(str(broken))


@pytest.mark.parametrize("method", ["ew", "mgda", "famo", "krum", "trimmed_mean", "cr_mogm"])
def test_a_few_steps_of_famos_celeba_protocol(root, tmp_path, method):
    overrides = [
        "experiment=celeba_famo",
        f"data.root={root}",
        f"method={method}",
        "data.batch_size=2",
        "model.encoder.widths=[4,8,8,8]",
        "model.encoder.features=8",
        "trainer.max_epochs=1",
        "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "~callbacks.rich_progress_bar",
    ]
    results = train(compose_config(overrides, tmp_path / "run"))
    assert results["global_step"] == 2 and len(results["test"]) == 41  # 40 attributes and their mean
    assert all(math.isfinite(metrics["f1"]) for metrics in results["test"].values())
