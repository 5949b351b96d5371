"""CityScapes (Cordts et al. 2016, CVPR) as MTAN preprocessed it: 2,975 training and 500 held-out
street scenes at 128×256, each with 7-class segmentation and (inverse) depth.

The release of Liu, Johns, Davison 2019 (arXiv:1803.10704; lorenmt/mtan), which CAGrad, Nash-MTL
and FAMO train on, read in place from ``root`` in its layout (``mtl.data.npy_folders``; with
``download``, fetched there first):
``{train,val}/{image,label_7,depth}/<i>.npy`` (the release also holds ``label_19``, the 19
classes, which the benchmark does not use). Tasks: ``segmentation`` (7 classes; mIoU, pixel
accuracy) and ``depth`` (absolute and relative error).
"""

from __future__ import annotations

from mtl.data.npy_folders import NpyFoldersDataModule
from mtl.dense_tasks import DepthTask, SegmentationTask
from mtl.tasks import INPUT_KEY

CLASSES = 7


class CityScapes(NpyFoldersDataModule):
    """CityScapes from ``root`` (``train`` and ``val``, MTAN's preprocessed release)."""

    name = "CityScapes"
    url = "https://www.dropbox.com/s/lg2ktu7o8hzwf99/cityscapes2.zip?dl=1"  # lorenmt/mtan's README (the 128x256 version)
    folders = {INPUT_KEY: "image", "segmentation": "label_7", "depth": "depth"}

    def __init__(self, root: str, **options) -> None:
        super().__init__(root, **options)
        self.tasks = [SegmentationTask("segmentation", CLASSES), DepthTask("depth")]
