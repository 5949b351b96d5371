import gzip
import shutil

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from mtl.data import MultiDigits, MultiMNIST, MultiTaskDataModule, MultiTaskDataset
from mtl.data.base import EpochShuffleSampler, EvaluationShard
from mtl.data.mnist_files import MNIST_FILES, md5, read_idx
from mtl.data.overlay import compose_pairs, split_pools
from mtl.tasks import IGNORE_INDEX, INPUT_KEY, BinaryTask, ClassificationTask, RegressionTask

SMALL_PAIRS = {"train": 2, "val": 1, "test": 1}


def built(datamodule):
    datamodule.prepare_data()
    datamodule.setup()
    return datamodule


def assert_disjoint_pools(sources):
    digits = {split: set(pairs.flatten().tolist()) for split, pairs in sources.items()}
    assert not digits["train"] & digits["val"]
    assert not digits["train"] & digits["test"]
    assert not digits["val"] & digits["test"]


def test_split_pools_are_disjoint_and_sized_by_fraction():
    pools = split_pools(100, {"train": 0.6, "val": 0.2, "test": 0.2}, torch.Generator().manual_seed(0))
    assert [len(pool) for pool in pools.values()] == [60, 20, 20]
    assert sorted(torch.cat(list(pools.values())).tolist()) == list(range(100))


def test_compose_pairs_places_digits_up_left_and_down_right_and_never_pairs_a_digit_with_itself():
    digits = torch.zeros(3, 2, 2, dtype=torch.uint8)
    digits[0], digits[1], digits[2] = 10, 20, 30
    pairs = compose_pairs(digits, torch.tensor([7, 8, 9]), torch.tensor([0, 1, 2]), 4, 3, torch.Generator().manual_seed(0))
    assert pairs["images"].shape == (12, 1, 3, 3)
    left, right = pairs["sources"].T
    assert torch.all(left != right)
    assert torch.equal(pairs["left"], torch.tensor([7, 8, 9])[left])
    image, a, b = pairs["images"][0, 0], 10 * (left[0] + 1), 10 * (right[0] + 1)
    expected = torch.tensor([[a, a, 0], [a, max(a, b), b], [0, b, b]], dtype=torch.uint8)
    assert torch.equal(image, expected)


def test_multidigits_shapes_labels_and_disjoint_pools(tmp_path):
    data = built(MultiDigits(tmp_path, pairs_per_digit=SMALL_PAIRS))
    num_digits = len(load_digits().images)
    for split, fraction in data.pool_fractions.items():
        dataset = data.splits[split]
        assert len(dataset) == round(fraction * num_digits) * SMALL_PAIRS[split]
        assert dataset.inputs.shape[1:] == (1, 12, 12)
        assert 0 <= dataset.inputs.min() and dataset.inputs.max() <= 1
    assert_disjoint_pools(data.sources)
    batch = next(iter(data.train_dataloader()))
    assert sorted(batch) == [INPUT_KEY, "left", "right"]
    assert batch[INPUT_KEY].shape == (256, 1, 12, 12)


def test_multidigits_labels_are_those_of_the_source_digits(tmp_path):
    data = built(MultiDigits(tmp_path, pairs_per_digit=SMALL_PAIRS))
    labels = torch.from_numpy(load_digits().target)
    left, right = data.sources["test"].T
    assert torch.equal(data.splits["test"].targets["left"], labels[left])
    assert torch.equal(data.splits["test"].targets["right"], labels[right])


def test_multidigits_is_deterministic_in_its_seed_and_cached(tmp_path):
    first = built(MultiDigits(tmp_path / "a", pairs_per_digit=SMALL_PAIRS, seed=1))
    again = built(MultiDigits(tmp_path / "b", pairs_per_digit=SMALL_PAIRS, seed=1))
    other = built(MultiDigits(tmp_path / "c", pairs_per_digit=SMALL_PAIRS, seed=2))
    assert torch.equal(first.splits["train"].inputs, again.splits["train"].inputs)
    assert not torch.equal(first.splits["train"].inputs, other.splits["train"].inputs)
    cache_files = list((tmp_path / "a").glob("multidigits-*.pt"))
    assert len(cache_files) == 1
    cached = built(MultiDigits(tmp_path / "a", pairs_per_digit=SMALL_PAIRS, seed=1))
    assert torch.equal(cached.splits["test"].inputs, first.splits["test"].inputs)


def test_pool_fractions_must_name_the_three_splits(tmp_path):
    with pytest.raises(ValueError, match=r"pool_fractions must have exactly the keys \['train', 'val', 'test'\], got \['test', 'train'\]"):
        MultiDigits(tmp_path, pool_fractions={"train": 0.8, "test": 0.2})


def test_epoch_shuffle_depends_only_on_seed_and_epoch():
    sampler = EpochShuffleSampler(range(50), seed=3)
    first = list(sampler)
    sampler.set_epoch(1)
    second = list(sampler)
    assert sorted(first) == list(range(50)) and first != second
    replay = EpochShuffleSampler(range(50), seed=3)
    replay.set_epoch(1)
    assert list(replay) == second


@pytest.mark.parametrize("length", [48, 50])
def test_epoch_shuffle_shards_hold_the_single_process_batches(length):
    single = list(EpochShuffleSampler(range(length), seed=3))
    shards = [list(EpochShuffleSampler(range(length), seed=3, processes=2, rank=rank)) for rank in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == -(-length // 2)
    padded = single + single[: 2 * len(shards[0]) - length]
    for start in range(0, len(shards[0]), 4):
        # the b-th batches of 4 of both processes are the b-th batch of 8 of one process
        assert sorted(shards[0][start : start + 4] + shards[1][start : start + 4]) == sorted(padded[2 * start : 2 * start + 8])


def test_evaluation_shards_hold_every_sample_once():
    shards = [list(EvaluationShard(range(7), processes=3, rank=rank)) for rank in range(3)]
    assert sorted(sum(shards, [])) == list(range(7))
    assert [len(EvaluationShard(range(7), processes=3, rank=rank)) for rank in range(3)] == [3, 2, 2]


def test_read_idx_reads_the_official_test_files(shared_mnist):
    images = read_idx(shared_mnist / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(shared_mnist / "t10k-labels-idx1-ubyte.gz")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,) and set(labels.tolist()) == set(range(10))


def test_multimnist_from_the_shared_test_set(shared_mnist, tmp_path):
    data = built(MultiMNIST(shared_mnist, tmp_path, splits_from="test_set", download=False))
    labels = torch.from_numpy(read_idx(shared_mnist / "t10k-labels-idx1-ubyte.gz").copy()).long()
    digits = torch.from_numpy(read_idx(shared_mnist / "t10k-images-idx3-ubyte.gz").copy())
    assert [len(data.splits[split]) for split in ("train", "val", "test")] == [6000, 2000, 2000]
    assert data.splits["train"].inputs.shape[1:] == (1, 36, 36)
    assert_disjoint_pools(data.sources)
    left, right = data.sources["val"].T
    assert torch.equal(data.splits["val"].targets["left"], labels[left])
    assert torch.equal(data.splits["val"].targets["right"], labels[right])
    image = data.splits["val"].inputs[0, 0] * 255
    expected = torch.zeros(36, 36)
    expected[:28, :28] = digits[left[0]]
    expected[8:, 8:] = torch.maximum(expected[8:, 8:], digits[right[0]].float())
    assert torch.allclose(image, expected, atol=1e-3)


def test_multimnist_as_sener_and_koltun_build_it(shared_mnist, tmp_path):
    # Their loader: left digit at [0:28, 0:28], right at [6:34, 6:34] of a 36x36 canvas (brighter
    # pixel wins), resized to 28x28 by nearest neighbour, normalized with MNIST's mean and std.
    normalize = {"mean": 0.1307, "std": 0.3081}
    data = built(MultiMNIST(shared_mnist, tmp_path, splits_from="test_set", download=False, right_offset=6, image_size=28, normalize=normalize))
    digits = torch.from_numpy(read_idx(shared_mnist / "t10k-images-idx3-ubyte.gz").copy()).float()
    assert data.input_shape == (1, 28, 28)
    assert data.splits["train"].inputs.shape[1:] == (1, 28, 28)
    left, right = data.sources["test"][0]
    canvas = torch.zeros(36, 36)
    canvas[:28, :28] = digits[left]
    canvas[6:34, 6:34] = torch.maximum(canvas[6:34, 6:34], digits[right])
    rows = ((torch.arange(28) + 0.5) * 36 / 28).floor().long()  # PIL's nearest neighbour (scipy.misc.imresize)
    expected = (canvas[rows][:, rows] / 255 - normalize["mean"]) / normalize["std"]
    assert torch.allclose(data.splits["test"].inputs[0, 0], expected, atol=1e-5)


def test_a_right_offset_outside_the_canvas_is_refused_with_the_valid_range():
    digits = torch.zeros(3, 2, 2, dtype=torch.uint8)
    with pytest.raises(ValueError, match="right_offset 2 puts the right digit .* valid offsets: 0 to 1"):
        compose_pairs(digits, torch.tensor([7, 8, 9]), torch.tensor([0, 1, 2]), 1, 3, torch.Generator().manual_seed(0), right_offset=2)


def test_multimnist_rejects_a_file_with_the_wrong_md5(shared_mnist, tmp_path):
    root = tmp_path / "mnist"
    root.mkdir()
    shutil.copy(shared_mnist / "t10k-labels-idx1-ubyte.gz", root)
    with gzip.open(root / "t10k-images-idx3-ubyte.gz", "wb") as handle:
        handle.write(b"not mnist")
    assert md5(root / "t10k-labels-idx1-ubyte.gz") == MNIST_FILES["t10k-labels-idx1-ubyte.gz"]
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte.gz has md5 \w+, expected 9fb629c4189551a2d022fa330f9573f3"):
        MultiMNIST(root, tmp_path / "cache", splits_from="test_set").prepare_data()


def test_multimnist_names_the_expected_files_when_the_root_lacks_them(shared_mnist, tmp_path):
    data = MultiMNIST(shared_mnist, tmp_path, splits_from="official", download=False)
    with pytest.raises(FileNotFoundError) as error:
        data.prepare_data()
    message = str(error.value)
    assert f"data.root='{shared_mnist}'" in message
    assert "['train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz']" in message
    assert "data.download=true" in message


def test_multimnist_rejects_an_unknown_split_source(tmp_path):
    with pytest.raises(ValueError, match=r"data.splits_from='train_set' is not one of \['official', 'test_set'\]"):
        MultiMNIST(tmp_path, tmp_path, splits_from="train_set")


class GivenSplits(MultiTaskDataModule):
    """A data module of the given tasks whose three splits are the given dataset."""

    def __init__(self, tasks, dataset):
        super().__init__(batch_size=4)
        self.tasks, self.dataset = tasks, dataset
        self.input_shape = tuple(dataset.inputs.shape[1:])

    def build_splits(self):
        return {"train": self.dataset, "val": self.dataset, "test": self.dataset}


@pytest.mark.parametrize(
    ("tasks", "inputs", "targets", "message"),
    [
        (
            [ClassificationTask("left", 10)],
            torch.zeros(9, 2),
            {"left": torch.tensor([0, 1, 2, 3, 4, 5, 6, 12, 9])},
            r"task 'left': train label 12 at index 7 outside 0..9; use -100 for a missing label",
        ),
        ([ClassificationTask("left", 10)], torch.zeros(3, 2), {"left": torch.tensor([0, -1, 2])}, r"task 'left': train label -1 at index 1 outside 0..9"),
        ([BinaryTask("smiling")], torch.zeros(3, 2), {"smiling": torch.tensor([[0], [1], [2]])}, r"task 'smiling': train label 2 at index 2 outside 0..1"),
        ([RegressionTask("y")], torch.zeros(3, 2), {"y": torch.tensor([[0.0], [float("nan")], [1.0]])}, r"task 'y': the train target at index 1 is not finite \(\[nan\]\)"),
        ([RegressionTask("y")], torch.tensor([[0.0, 1.0], [2.0, float("inf")]]), {"y": torch.zeros(2, 1)}, r"the train input at index 1 is not finite"),
    ],
)
def test_setup_names_the_first_sample_a_task_cannot_train_on(tasks, inputs, targets, message):
    with pytest.raises(ValueError, match=message):
        GivenSplits(tasks, MultiTaskDataset(inputs, targets)).setup()


def test_missing_labels_pass_the_setup_check():
    data = GivenSplits([ClassificationTask("left", 3)], MultiTaskDataset(torch.zeros(3, 2), {"left": torch.tensor([0, IGNORE_INDEX, 2])}))
    data.setup()
    assert len(data.splits["train"]) == 3
