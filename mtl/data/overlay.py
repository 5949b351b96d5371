"""Two-digit overlays (MultiMNIST, Sener & Koltun 2018; MultiDigits): one digit up-left, one down-right.

Source digits are first split into disjoint pools, and pairs are composed inside one pool, so no
digit image appears in two splits. Each digit of a pool is the left digit of ``pairs_per_digit``
pairs, with a right digit drawn uniformly from the rest of the same pool. The canvases can then be
resized (nearest neighbour) and normalized, as Sener & Koltun's loader does (36x36 canvases, the
right digit at offset 6, resized to 28x28, normalized with MNIST's mean 0.1307 and std 0.3081).
"""

from __future__ import annotations

from abc import abstractmethod
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mtl.data.base import SPLITS, MultiTaskDataModule, MultiTaskDataset, cached, require_splits
from mtl.tasks import ClassificationTask


def split_pools(num_digits: int, fractions: dict[str, float], generator: torch.Generator) -> dict[str, Tensor]:
    """Disjoint random index pools over ``range(num_digits)``, one per split, sized by ``fractions``."""
    total = sum(fractions.values())
    if any(fraction <= 0 for fraction in fractions.values()) or total > 1 + 1e-9:
        raise ValueError(f"pool fractions must be positive and sum to at most 1, got {fractions}")
    permutation = torch.randperm(num_digits, generator=generator)
    pools, start = {}, 0
    for split, fraction in fractions.items():
        size = int(round(fraction * num_digits))
        pools[split] = permutation[start : start + size]
        start += size
    return pools


def compose_pairs(
    digits: Tensor,
    labels: Tensor,
    pool: Tensor,
    pairs_per_digit: int,
    canvas_size: int,
    generator: torch.Generator,
    right_offset: int | None = None,
) -> dict[str, Tensor]:
    """Overlay pairs of ``digits (N, h, w)`` from ``pool`` on ``canvas_size``² canvases.

    The left digit's top-left corner is the canvas's; the right digit's top-left corner is at
    ``(right_offset, right_offset)``, by default where its bottom-right corner is the canvas's;
    where they overlap the brighter pixel wins. Returns ``images (M, 1, S, S)`` (dtype of
    ``digits``), ``left`` and ``right`` labels ``(M,)``, and ``sources (M, 2)``, the digit indices used.
    """
    if len(pool) < 2:
        raise ValueError(f"a pool needs at least two digits to form pairs, got {len(pool)}")
    height, width = digits.shape[-2:]
    if canvas_size < max(height, width):
        raise ValueError(f"canvas_size {canvas_size} is smaller than a digit ({height}x{width})")
    top, left_edge = (canvas_size - height, canvas_size - width) if right_offset is None else (right_offset, right_offset)
    if not (0 <= top <= canvas_size - height and 0 <= left_edge <= canvas_size - width):
        raise ValueError(
            f"right_offset {right_offset} puts the right digit ({height}x{width}) outside the {canvas_size}x{canvas_size} canvas; "
            f"valid offsets: 0 to {canvas_size - max(height, width)}"
        )
    left = pool.repeat(pairs_per_digit)
    # A uniform offset in 1..len(pool)-1 picks any other member of the pool, never the digit itself.
    position = torch.arange(len(pool)).repeat(pairs_per_digit)
    offset = torch.randint(1, len(pool), (len(left),), generator=generator)
    right = pool[(position + offset) % len(pool)]

    images = torch.zeros(len(left), canvas_size, canvas_size, dtype=digits.dtype)
    images[:, :height, :width] = digits[left]
    corner = images[:, top : top + height, left_edge : left_edge + width]
    corner.copy_(torch.maximum(corner, digits[right]))
    return {
        "images": images.unsqueeze(1),
        "left": labels[left],
        "right": labels[right],
        "sources": torch.stack([left, right], dim=1),
    }


class TwoDigitOverlay(MultiTaskDataModule):
    """A data module of two-digit overlays: tasks ``left`` and ``right``, 10 classes each.

    Subclasses generate the pairs (``generate``: ``{split}/images``, ``/left``, ``/right``,
    ``/sources`` for every split) from the parameters in ``cache_parameters``; the result is
    cached in ``cache_dir``. ``sources[split]`` holds the source digit indices of every pair.
    """

    cache_name: str
    pixel_levels: int
    """Pixels are integers in ``0..pixel_levels``, scaled to [0, 1] for the model."""

    def __init__(
        self,
        cache_dir: str | Path,
        canvas_size: int,
        pairs_per_digit: dict[str, int],
        batch_size: int,
        eval_batch_size: int | None,
        num_workers: int,
        seed: int,
        shuffle_seed: int,
        right_offset: int | None = None,
        image_size: int | None = None,
        normalize: dict[str, float] | None = None,
    ) -> None:
        super().__init__(batch_size, eval_batch_size, num_workers, seed, shuffle_seed)
        if image_size is not None and image_size < 1:
            raise ValueError(f"image_size must be a positive number of pixels or null, got {image_size}")
        if normalize is not None and (sorted(normalize) != ["mean", "std"] or normalize["std"] <= 0):
            raise ValueError(f"normalize must be null or {{mean: M, std: S}} with S > 0, got {normalize}")
        self.cache_dir = Path(cache_dir)
        self.canvas_size = canvas_size
        self.right_offset = right_offset
        self.image_size = image_size
        self.normalize = dict(normalize) if normalize is not None else None
        self.pairs_per_digit = require_splits(dict(pairs_per_digit), "pairs_per_digit")
        self.tasks = [ClassificationTask("left", 10), ClassificationTask("right", 10)]
        size = image_size or canvas_size
        self.input_shape = (1, size, size)
        self.sources: dict[str, Tensor] = {}

    @abstractmethod
    def cache_parameters(self) -> dict[str, Any]:
        """Everything the generated pairs depend on."""

    @abstractmethod
    def generate(self) -> dict[str, Tensor]:
        """The pairs of every split, as returned by ``compose_pairs`` with keys prefixed by ``{split}/``."""

    def build_splits(self) -> dict[str, MultiTaskDataset]:
        tensors = cached(self.cache_dir, self.cache_name, self.cache_parameters(), self.generate)
        self.sources = {split: tensors[f"{split}/sources"] for split in SPLITS}
        return {
            split: MultiTaskDataset(self.model_images(tensors[f"{split}/images"]), {task: tensors[f"{split}/{task}"] for task in ("left", "right")})
            for split in SPLITS
        }

    def model_images(self, canvases: Tensor) -> Tensor:
        """The model's inputs from canvases of pixel levels: scaled to [0, 1], resized to
        ``image_size`` (nearest neighbour) and normalized when asked."""
        images = canvases.float() / self.pixel_levels
        if self.image_size is not None and self.image_size != self.canvas_size:
            # "nearest-exact" samples pixel floor((i + 0.5) * scale), as PIL's nearest resize does
            images = F.interpolate(images, size=(self.image_size, self.image_size), mode="nearest-exact")
        if self.normalize is not None:
            images = (images - self.normalize["mean"]) / self.normalize["std"]
        return images

    def compose_splits(self, sources: dict[str, tuple[Tensor, Tensor, Tensor]], generator: torch.Generator) -> dict[str, Tensor]:
        """``generate``'s result from ``{split: (digits, labels, pool)}``."""
        tensors = {}
        for split, (digits, labels, pool) in sources.items():
            pairs = compose_pairs(digits, labels, pool, self.pairs_per_digit[split], self.canvas_size, generator, self.right_offset)
            tensors.update({f"{split}/{key}": value for key, value in pairs.items()})
        return tensors
