"""Attention masks: what each task of an attention architecture lets through, at the end of training.

For ``mtl.models.MTAN`` and ``mtl.models.SegNetMTAN``, ``model.attention_masks(x)`` gives every
task's soft masks in (0, 1), one per stage. At the end of training ``AttentionMasks`` averages each
mask over (up to ``batches``) validation batches, their pixels and channels, in eval mode and
without gradients, and saves ``attention_masks.json`` (``{task: [mean mask per stage]}``) and
``attention_masks.png`` (for the first validation sample, each task's mask per stage, averaged
over the channels) into ``dirpath``. A mask near 1 passes the shared features on; tasks whose
masks differ select different features (Liu et al. 2019, Section 4.3, show such maps). It
changes nothing in training: it runs after the last step.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import matplotlib
import torch
from torch import Tensor

from mtl.callbacks.end_of_training import EndOfTrainingSummary

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the file backend)


class AttentionMasks(EndOfTrainingSummary):
    """The mean attention mask per task and stage over ``batches`` validation batches, and the
    first sample's masks, saved into ``dirpath`` (default: the trainer's ``default_root_dir``)."""

    requires = "attention_masks"
    examples = "model=mtan or segnet_mtan"

    def summarize(self, model: torch.nn.Module, inputs: Iterator[Tensor]) -> tuple[dict[str, Tensor], dict[str, list[Tensor]]]:
        """``{task: mean of each stage's mask (S,)}`` over ``inputs``, and ``{task: [the first
        sample's channel-mean mask (H, W) per stage]}``."""
        totals: dict[str, Tensor] = {}
        first: dict[str, list[Tensor]] = {}
        samples = 0
        for batch in inputs:
            for name, masks in model.attention_masks(batch).items():
                per_sample = torch.stack([mask.flatten(start_dim=1).mean(dim=1) for mask in masks], dim=1)  # (B, S)
                totals[name] = totals.get(name, 0) + per_sample.sum(dim=0).double().cpu()
                first.setdefault(name, [mask[0].mean(dim=0).cpu() for mask in masks])
            samples += len(batch)
        return {name: total / samples for name, total in totals.items()}, first

    def save(self, summary: tuple[dict[str, Tensor], dict[str, list[Tensor]]], directory: Path) -> None:
        means, first = summary
        (directory / "attention_masks.json").write_text(json.dumps({name: values.tolist() for name, values in means.items()}) + "\n")
        plot_masks(first, means, directory / "attention_masks.png")


def plot_masks(first: dict[str, list[Tensor]], means: dict[str, Tensor], path: Path) -> None:
    """A grid of the first sample's masks: one row per task, one column per stage, in [0, 1]."""
    names = list(first)
    stages = len(first[names[0]])
    figure, axes = plt.subplots(len(names), stages, figsize=(1.6 * stages + 1, 1.5 * len(names) + 0.5), squeeze=False, layout="constrained")
    for row, name in enumerate(names):
        for column, mask in enumerate(first[name]):
            image = axes[row, column].imshow(mask, cmap="viridis", vmin=0, vmax=1)
            axes[row, column].set_xticks([]), axes[row, column].set_yticks([])
            axes[row, column].set_title(f"stage {column}: {means[name][column]:.2f}", fontsize=7)
        axes[row, 0].set_ylabel(name, fontsize=8)
    figure.colorbar(image, ax=axes, shrink=0.8)
    figure.suptitle("attention masks of the first validation sample (title: mean over the batches)", fontsize=8)
    figure.savefig(path, dpi=120)
    plt.close(figure)
