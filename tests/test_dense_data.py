"""NYUv2 and CityScapes read from fixtures in MTAN's on-disk format: shapes, dtypes and values as
stored, the unlabelled pixels, the error for an incomplete release, the official augmentation
drawn from (seed, epoch, index), and the download of a release archive (from a local file URL)."""

import zipfile

import numpy as np
import pytest
import torch

from mtl.data import CityScapes, NYUv2
from mtl.data.npy_folders import EpochIndexSampler, scale_crop_flip
from mtl.tasks import IGNORE_INDEX
from tests.dense_fixtures import HEIGHT, SPLITS, WIDTH, write_cityscapes, write_nyuv2


@pytest.fixture(scope="module")
def nyuv2_root(tmp_path_factory):
    return write_nyuv2(tmp_path_factory.mktemp("nyuv2"))


@pytest.fixture(scope="module")
def cityscapes_root(tmp_path_factory):
    return write_cityscapes(tmp_path_factory.mktemp("cityscapes"))


def test_an_nyuv2_sample_is_the_stored_arrays_channels_first_with_unlabelled_pixels_ignored(nyuv2_root):
    data = NYUv2(str(nyuv2_root))
    data.setup()
    sample = data.splits["train"][1]
    stored = {folder: np.load(nyuv2_root / "train" / folder / "1.npy") for folder in ("image", "label", "depth", "normal")}
    assert data.input_shape == (3, HEIGHT, WIDTH)
    assert torch.equal(sample["input"], torch.from_numpy(stored["image"]).permute(2, 0, 1))
    assert torch.equal(sample["depth"], torch.from_numpy(stored["depth"]).permute(2, 0, 1))
    assert torch.equal(sample["normal"], torch.from_numpy(stored["normal"]).permute(2, 0, 1))
    labels = torch.from_numpy(stored["label"])
    assert sample["segmentation"].dtype == torch.long
    assert torch.equal(sample["segmentation"], torch.where(labels < 0, IGNORE_INDEX, labels.long()))
    assert (sample["segmentation"] == IGNORE_INDEX).any()


def test_the_held_out_split_is_both_validation_and_test_and_the_tasks_are_the_benchmarks(nyuv2_root, cityscapes_root):
    nyuv2, cityscapes = NYUv2(str(nyuv2_root)), CityScapes(str(cityscapes_root))
    for data in (nyuv2, cityscapes):
        data.setup()
        assert (len(data.splits["train"]), len(data.splits["val"])) == (SPLITS["train"], SPLITS["val"])
        assert data.splits["test"] is data.splits["val"]
    assert [(task.name, task.num_outputs) for task in nyuv2.tasks] == [("segmentation", 13), ("depth", 1), ("normal", 3)]
    assert [(task.name, task.num_outputs) for task in cityscapes.tasks] == [("segmentation", 7), ("depth", 1)]
    batch = next(iter(cityscapes.val_dataloader()))
    assert {key: tuple(value.shape) for key, value in batch.items()} == {"input": (2, 3, HEIGHT, WIDTH), "segmentation": (2, HEIGHT, WIDTH), "depth": (2, 1, HEIGHT, WIDTH)}


def test_an_incomplete_release_names_the_root_the_layout_and_the_missing_files(cityscapes_root, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"NYUv2 is not complete at .*train: expected .*\{image,label,depth,normal\}/<i>.npy .* missing .*label/0.npy"):
        NYUv2(str(cityscapes_root))
    with pytest.raises(FileNotFoundError, match=r"CityScapes is not complete at .*nowhere/train.* missing .*image/0.npy"):
        CityScapes(str(tmp_path / "nowhere"))


class Draws:
    """A stand-in for ``random.Random`` that picks the scale ``scale_index``, the top-left crop,
    and a flip or not."""

    def __init__(self, scale_index: int, flip: bool) -> None:
        self.scale_index, self.flip = scale_index, flip

    def randrange(self, stop):
        return self.scale_index

    def randint(self, low, high):
        return low

    def random(self):
        return 0.0 if self.flip else 1.0


def raw_sample(root):
    data = NYUv2(str(root))
    sample = data.datasets["train"].load(0)
    return {key: value.clone() for key, value in sample.items()}


def test_the_augmentation_at_scale_one_with_a_flip_mirrors_every_map_and_negates_the_normals_x(nyuv2_root):
    sample = raw_sample(nyuv2_root)
    augmented = scale_crop_flip(sample, Draws(scale_index=0, flip=True))
    for key in ("input", "segmentation", "depth"):
        assert torch.allclose(augmented[key], sample[key].flip(-1), atol=1e-6)
    expected_normal = sample["normal"].flip(-1)
    expected_normal[0] = -expected_normal[0]
    assert torch.allclose(augmented["normal"], expected_normal, atol=1e-6)


def test_the_augmentation_zooms_labels_and_depth_by_nearest_pixels_and_divides_depth_by_the_scale(nyuv2_root):
    sample = raw_sample(nyuv2_root)
    augmented = scale_crop_flip(sample, Draws(scale_index=2, flip=False))  # scale 1.5: the top-left 21x42 crop
    assert {key: tuple(value.shape) for key, value in augmented.items()} == {key: tuple(value.shape) for key, value in sample.items()}
    crop = (slice(0, int(HEIGHT / 1.5)), slice(0, int(WIDTH / 1.5)))
    assert set(augmented["segmentation"].unique().tolist()) <= set(sample["segmentation"][crop].unique().tolist())
    distance_to_a_cropped_depth = ((augmented["depth"] * 1.5).flatten()[:, None] - sample["depth"][0][crop].flatten()[None]).abs().min(dim=1).values
    assert distance_to_a_cropped_depth.max() < 1e-5
    assert augmented["input"][:, 0, 0].tolist() == pytest.approx(sample["input"][:, 0, 0].tolist())  # the corners align


def test_augmented_training_samples_depend_on_the_seed_epoch_and_index_alone(nyuv2_root):
    data = NYUv2(str(nyuv2_root), augmentation=True, shuffle_seed=3)
    data.setup()
    train = data.splits["train"]
    first, again, next_epoch = train[(0, 1)], train[(0, 1)], train[(1, 1)]
    assert all(torch.equal(first[key], again[key]) for key in first)
    assert any(not torch.equal(first[key], next_epoch[key]) for key in first)
    assert isinstance(data.train_dataloader().sampler, EpochIndexSampler)
    assert torch.equal(data.splits["val"][1]["input"], NYUv2(str(nyuv2_root)).datasets["val"][1]["input"])  # evaluation is never augmented


def test_download_unpacks_the_release_archive_as_the_root_and_a_missing_release_says_how_to_fetch_it(tmp_path):
    release = write_nyuv2(tmp_path / "source" / "nyuv2")
    archive = tmp_path / "nyuv2.zip"
    with zipfile.ZipFile(archive, "w") as packed:  # as the release's archive: one top directory
        for path in sorted(release.rglob("*.npy")):
            packed.write(path, path.relative_to(release.parent))
    root = tmp_path / "data" / "nyuv2"
    with pytest.raises(FileNotFoundError, match=r"set data.download=true to fetch the release from https://www.dropbox.com/"):
        NYUv2(str(root))
    data = NYUv2(str(root), download=True, url=archive.as_uri())
    data.setup()
    stored = torch.from_numpy(np.load(release / "val" / "image" / "0.npy")).permute(2, 0, 1)
    assert len(data.splits["train"]) == SPLITS["train"] and torch.equal(data.splits["val"][0]["input"], stored)
    assert sorted(path.name for path in root.parent.iterdir()) == ["nyuv2"]  # no archive or scratch left beside it
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"unpacks the release as .*other, which holds other files"):
        NYUv2(str(tmp_path / "other"), download=True, url=archive.as_uri())
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


def test_setup_checks_the_first_sample_of_a_streamed_split(tmp_path):
    root = write_nyuv2(tmp_path / "nyuv2")
    labels = np.load(root / "val" / "label" / "0.npy")
    labels[3, 5] = 13  # NYUv2 has classes 0..12
    np.save(root / "val" / "label" / "0.npy", labels)
    with pytest.raises(ValueError, match=r"task 'segmentation': val label 13 at index 0 outside 0..12; use -100 for a missing label"):
        NYUv2(str(root)).setup()
