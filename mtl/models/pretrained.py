"""ImageNet weights for ``mtl.models.ResNet``: a torchvision ResNet state dict loaded into the stem and the blocks.

The ResNet of He et al. 2016 ("Deep Residual Learning for Image Recognition", arXiv:1512.03385)
as torchvision lays it out (``torchvision/models/resnet.py``: ``conv1``, ``bn1``, ``relu``,
``maxpool``, ``layer1`` … ``layer4`` of basic blocks, ``avgpool``, ``fc``) computes what a
``ResNet(stem="imagenet")`` computes, under other names. With ``s`` the stage (0-based), ``b`` the
block in it and ``blocks`` the blocks per stage, a key of ``encoder.layers`` maps to torchvision's

===========================================  =================================
``mtl`` (``encoder.state_dict()``)           torchvision
===========================================  =================================
``layers.0.*`` (7x7 convolution)             ``conv1.*``
``layers.1.*`` (BatchNorm)                   ``bn1.*``
``layers.{4 + s*blocks + b}.body.0.*``       ``layer{s+1}.{b}.conv1.*``
``layers.{4 + s*blocks + b}.body.1.*``       ``layer{s+1}.{b}.bn1.*``
``layers.{4 + s*blocks + b}.body.3.*``       ``layer{s+1}.{b}.conv2.*``
``layers.{4 + s*blocks + b}.body.4.*``       ``layer{s+1}.{b}.bn2.*``
``layers.{4 + s*blocks + b}.shortcut.0.*``   ``layer{s+1}.{b}.downsample.0.*``
``layers.{4 + s*blocks + b}.shortcut.1.*``   ``layer{s+1}.{b}.downsample.1.*``
===========================================  =================================

torchvision's ``fc.*`` (the ImageNet classifier) is not used, and the encoder's projection (after the
pooling; torchvision has none) keeps its own initialization. ``widths=(64, 128, 256, 512)``,
``blocks=2`` is ResNet-18, whose ImageNet weights are torchvision's ``ResNet18_Weights.IMAGENET1K_V1``
(``RESNET18_IMAGENET_URL``), downloaded once by the user: nothing is downloaded here. The load is
strict: a tensor the encoder needs that the file lacks, a shape that differs (other widths, blocks
or input channels) and a tensor of the file that fits nowhere (a Bottleneck ResNet-50's ``conv3``)
each stop it with the names. ``num_batches_tracked`` alone may be absent: torchvision's older files
predate it, and it counts training batches without entering the forward (BatchNorm's momentum is set).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from mtl.checkpoints import refused_object
from mtl.models.encoders import BasicBlock

if TYPE_CHECKING:
    from mtl.models.encoders import ResNet

RESNET18_IMAGENET_URL = "https://download.pytorch.org/models/resnet18-f37072fd.pth"
"""torchvision's ``ResNet18_Weights.IMAGENET1K_V1``."""

STEM_NAMES = {"layers.0": "conv1", "layers.1": "bn1"}
"""The imagenet stem's modules with weights, by their torchvision names."""

BLOCK_NAMES = {"body.0": "conv1", "body.1": "bn1", "body.3": "conv2", "body.4": "bn2", "shortcut.0": "downsample.0", "shortcut.1": "downsample.1"}
"""A ``BasicBlock``'s modules with weights, by their names in torchvision's ``BasicBlock``."""

SHOWN = 5
"""How many names an error lists."""


def load_torchvision_resnet(encoder: ResNet, path: str) -> None:
    """Load the torchvision ResNet state dict at ``path`` into the stem and the blocks of ``encoder``
    (a ``ResNet`` with ``stem="imagenet"``); its projection, if any, is left as it is."""
    if encoder.stem != "imagenet":
        raise ValueError(f"pretrained weights need ResNet stem 'imagenet', not stem '{encoder.stem}': torchvision's ResNets use the imagenet stem (7x7 convolution, max-pool)")
    weights = read_state_dict(path)
    names = torchvision_names(encoder)
    own = encoder.state_dict()
    missing = [theirs for theirs in names.values() if theirs not in weights and not theirs.endswith(".num_batches_tracked")]
    if missing:
        raise ValueError(f"pretrained={path} lacks {len(missing)} tensor(s) of a torchvision ResNet with these widths and blocks: {listed(missing)}")
    expected = set(names.values())
    unused = [key for key in weights if key not in expected and not key.startswith("fc.")]
    if unused:
        raise ValueError(f"pretrained={path} has {len(unused)} tensor(s) that fit nowhere in this ResNet of BasicBlocks (another depth or block type?): {listed(unused)}")
    mismatched = [
        f"{theirs} {tuple(weights[theirs].shape)} in the file, {tuple(own[ours].shape)} in the encoder"
        for ours, theirs in names.items()
        if theirs in weights and weights[theirs].shape != own[ours].shape
    ]
    if mismatched:
        raise ValueError(f"pretrained={path} does not fit this ResNet's widths, blocks or input channels: {listed(mismatched)}")
    own.update({ours: weights[theirs] for ours, theirs in names.items() if theirs in weights})
    encoder.load_state_dict(own)


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """The state dict at ``path``, read as data (``weights_only``): a plain one or the ``state_dict``
    entry of a training checkpoint, without the ``module.`` prefix that DataParallel adds to every key."""
    if not Path(path).is_file():
        raise FileNotFoundError(
            f"pretrained={path}: no such file; ImageNet weights for ResNet-18 are torchvision's ResNet18_Weights.IMAGENET1K_V1, "
            f"downloaded once on your machine from {RESNET18_IMAGENET_URL} (nothing is downloaded at run time)"
        )
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(f"pretrained={path}: not a readable state dict ({refused_object(str(error))})") from None
    if isinstance(loaded, dict) and "state_dict" in loaded:
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not all(isinstance(tensor, torch.Tensor) for tensor in loaded.values()):
        raise ValueError(f"pretrained={path}: not a state dict (a dict of tensors, or a dict with a 'state_dict' entry); got {type(loaded).__name__}")
    if loaded and all(key.startswith("module.") for key in loaded):
        loaded = {key.removeprefix("module."): tensor for key, tensor in loaded.items()}
    return loaded


def torchvision_names(encoder: ResNet) -> dict[str, str]:
    """Each key of ``encoder.state_dict()`` in the stem and the blocks, mapped to its torchvision name."""
    modules = dict(STEM_NAMES)
    block_indices = [index for index, layer in enumerate(encoder.layers) if isinstance(layer, BasicBlock)]
    for position, index in enumerate(block_indices):
        stage, block = divmod(position, encoder.blocks)
        modules.update({f"layers.{index}.{ours}": f"layer{stage + 1}.{block}.{theirs}" for ours, theirs in BLOCK_NAMES.items()})
    names = {}
    for key in encoder.state_dict():
        module, _, tensor = key.rpartition(".")
        if module in modules:
            names[key] = f"{modules[module]}.{tensor}"
    return names


def listed(names: list[str]) -> str:
    """The first ``SHOWN`` of ``names``, and how many more."""
    more = f" and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
    return ", ".join(names[:SHOWN]) + more
