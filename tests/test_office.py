"""Office-31 and Office-Home read from fixtures in the releases' format with LibMTL's split lists:
each domain a task on its own images, the lists' labels, ImageNet normalization, the seeded split
without lists, clear errors; the per-task training batches and a few steps of LibMTL's protocol,
each task evaluated on its own data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from mtl.build import build_datamodule_and_module
from mtl.data import Office31, OfficeHome
from mtl.data.office import IMAGENET_MEAN, IMAGENET_STD
from mtl.data.per_task import CyclingShuffleSampler, steps_per_epoch
from mtl.tasks import predict
from mtl.train import train
from tests.conftest import compose_config
from tests.office_fixtures import fixture_label, write_office


@pytest.fixture(scope="module")
def office31(tmp_path_factory):
    return write_office(tmp_path_factory.mktemp("office31"))


@pytest.fixture(scope="module")
def office_home(tmp_path_factory):
    return write_office(tmp_path_factory.mktemp("office_home"), "office_home")


def test_a_sample_is_its_jpeg_resized_bilinearly_and_normalized_with_the_list_label(office31):
    root, lists = office31
    data = Office31(root, splits=lists, image_size=(6, 8))
    data.setup()
    path, label = (lists / "dslr_val.txt").read_text().splitlines()[4].split()
    sample = data.splits["val"]["dslr"][4]
    with Image.open(root / path) as image:
        pixels = np.asarray(image.convert("RGB").resize((8, 6), Image.BILINEAR), dtype=np.float32) / 255
    expected = (torch.from_numpy(pixels).permute(2, 0, 1) - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
    assert data.input_shape == (3, 6, 8) and torch.allclose(sample["input"], expected, atol=1e-6)
    assert sample["dslr"].item() == int(label) == fixture_label(4, 31)  # the list's label, not the folder's rank
    assert set(sample) == {"input", "dslr"}
    assert [(task.name, task.num_outputs) for task in data.tasks] == [("amazon", 31), ("dslr", 31), ("webcam", 31)]


def test_the_splits_are_the_lists_and_office_home_reads_its_real_world_folder(office31, office_home):
    root, lists = office31
    data = Office31(root, splits=lists)
    data.setup()
    sizes = {split: {domain: len(dataset) for domain, dataset in datasets.items()} for split, datasets in data.splits.items()}
    assert sizes == {"train": {"amazon": 62, "dslr": 31, "webcam": 31}, "val": {"amazon": 31, "dslr": 31, "webcam": 31}, "test": {"amazon": 31, "dslr": 31, "webcam": 31}}
    root, lists = office_home
    home = OfficeHome(root, splits=lists, domains=["Real_World", "Art"])
    home.setup()
    assert [task.name for task in home.tasks] == ["Real_World", "Art"] and home.tasks[0].num_outputs == 65
    path, label = home.splits["test"]["Real_World"].samples[0]
    assert path == root / "Real World" / "class_00" / "frame_0002.jpg" and label == fixture_label(0, 65)


def test_without_lists_each_class_folder_is_split_sixty_twenty_twenty_by_the_seed(tmp_path):
    root, _ = write_office(tmp_path, images_per_class=5)
    first, again, other = (Office31(root, seed=seed).samples["dslr"] for seed in (0, 0, 1))
    assert first == again and first != other
    assert [len(first[split]) for split in ("train", "val", "test")] == [3 * 31, 31, 31]
    paths = [path for split in first.values() for path, _ in split]
    assert len(set(paths)) == 5 * 31  # disjoint, and every image used
    for path, label in first["train"]:
        assert path.parent.name == f"class_{label:02d}"  # alphabetical labels


def test_bad_roots_domains_lists_and_missing_images_are_named(office31, tmp_path):
    root, lists = office31
    with pytest.raises(FileNotFoundError, match=r"no Office31 at .*nowhere: expected a folder per domain \['amazon', 'dslr', 'webcam'\]"):
        Office31(tmp_path / "nowhere")
    with pytest.raises(ValueError, match=r"unknown OfficeHome domains \['Real World'\]; valid choices: \['Art', 'Clipart', 'Product', 'Real_World'\]"):
        OfficeHome(root, domains=["Real World"])
    with pytest.raises(FileNotFoundError, match=r"no split list .*amazon_train.txt"):
        Office31(root, splits=tmp_path)
    broken = tmp_path / "lists"
    broken.mkdir()
    for path in lists.iterdir():
        (broken / path.name).write_text(path.read_text())
    (broken / "webcam_val.txt").write_text("webcam/images/class_00/frame_0001.jpg 31\n")
    with pytest.raises(ValueError, match=r"webcam_val.txt:1: expected an image path and a label in 0..30, got 'webcam/images/class_00/frame_0001.jpg 31'"):
        Office31(root, splits=broken)
    (broken / "webcam_val.txt").write_text("webcam/images/class_00/frame_0001.jpg 3\nwebcam/images/class_00/lost.jpg 3\n")
    with pytest.raises(FileNotFoundError, match=r"1 images of the webcam val split under .* are missing, e.g. \['.*class_00/lost.jpg'\]"):
        Office31(root, splits=broken)
    with pytest.raises(ValueError, match=r"the amazon train split under .* has no images \(each class folder needs 3 images or more\)"):
        Office31(write_office(tmp_path / "small", images_per_class=1)[0])


def test_an_epoch_is_the_largest_tasks_full_batches_and_a_smaller_task_cycles_through_permutations(office31):
    root, lists = office31
    data = Office31(root, splits=lists, image_size=(4, 4), batch_size=8)
    data.setup()
    loaders = data.train_dataloader()
    assert steps_per_epoch({"amazon": 62, "dslr": 31}, 8, 1) == 7 == len(loaders["amazon"]) == len(loaders["dslr"])
    order = list(loaders["dslr"].sampler)
    assert len(order) == 7 * 8
    passes = [order[start : start + 24] for start in range(0, 56, 24)]  # 31 samples make 3 full batches a pass
    assert all(len(set(part)) == len(part) for part in passes) and sorted(passes[0]) != list(range(24))
    batch = next(iter(loaders["dslr"]))
    assert set(batch) == {"input", "dslr"} and batch["input"].shape == (8, 3, 4, 4)
    assert torch.equal(batch["dslr"], torch.stack([data.splits["train"]["dslr"][index]["dslr"] for index in order[:8]]))
    assert list(loaders["amazon"].sampler) != list(loaders["webcam"].sampler)  # each task its own stream


def test_two_processes_share_the_single_process_batches_and_each_epoch_reshuffles():
    dataset, steps = range(13), 4
    single = CyclingShuffleSampler(dataset, seed=3, stream=1, batch_size=4, steps=steps, processes=1, rank=0)
    shards = [CyclingShuffleSampler(dataset, seed=3, stream=1, batch_size=2, steps=steps, processes=2, rank=rank) for rank in (0, 1)]
    whole, parts = list(single), [list(shard) for shard in shards]
    assert len(whole) == 16 and all(len(part) == 8 for part in parts)
    for step in range(steps):
        assert sorted(whole[4 * step : 4 * step + 4]) == sorted(parts[0][2 * step : 2 * step + 2] + parts[1][2 * step : 2 * step + 2])
    assert all(len(set(whole[start : start + 12])) == 12 for start in (0, 12) if start + 12 <= 16)  # a pass: 3 full batches of 4
    single.set_epoch(1)
    assert list(single) != whole


@pytest.mark.parametrize("overrides", [["method=ew"], ["method=mgda"], ["method=pcgrad", "sam=fmtl"]], ids=["ew", "mgda", "pcgrad_fmtl"])
def test_a_few_steps_of_libmtls_office_protocol_evaluate_each_task_on_its_own_data(office31, tmp_path, overrides):
    root, lists = office31
    cfg = compose_config(
        [
            "experiment=office31_libmtl",
            f"data.root={root}",
            f"data.splits={lists}",
            "data.batch_size=8",
            "data.image_size=[16,16]",
            "model.encoder.widths=[4,8]",
            "model.encoder.features=8",
            "trainer.max_epochs=1",
            "trainer.accelerator=cpu",
            "trainer.enable_progress_bar=false",
            "trainer.enable_model_summary=false",
            "~callbacks.rich_progress_bar",
            *overrides,
        ],
        tmp_path / "run",
    )
    results = train(cfg)
    assert results["global_step"] == 62 // 8
    assert set(results["test"]) == {"amazon", "dslr", "webcam", "mean"}
    assert all(math.isfinite(metrics["loss"]) for metrics in results["test"].values())
    checkpoint = torch.load(results["checkpoint"], weights_only=True)
    data = Office31(root, splits=lists, image_size=(16, 16))
    data.setup()
    _, module = build_datamodule_and_module(cfg)
    module.load_state_dict(checkpoint["state_dict"])
    module.eval()
    for task in module.tasks:
        dataset = data.splits["test"][task.name]
        batch = {task.name: {key: torch.stack([dataset[index][key] for index in range(len(dataset))]) for key in ("input", task.name)}}
        with torch.no_grad():
            logits = predict(module.model, [task], batch)[task.name]
        labels = batch[task.name][task.name]
        assert results["test"][task.name]["loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item(), rel=1e-5)
        assert results["test"][task.name]["accuracy"] == pytest.approx((logits.argmax(1) == labels).float().mean().item(), abs=1e-6)
