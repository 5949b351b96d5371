"""NYUv2 (Silberman et al. 2012, ECCV) as MTAN preprocessed it: 795 training and 654 held-out
indoor scenes at 288×384, each with 13-class segmentation, depth and surface normals.

The release of Liu, Johns, Davison 2019 (arXiv:1803.10704; lorenmt/mtan), which CAGrad, Nash-MTL
and FAMO train on, read in place from ``root`` in its layout (``mtl.data.npy_folders``; with
``download``, fetched there first):
``{train,val}/{image,label,depth,normal}/<i>.npy``. Tasks: ``segmentation`` (13 classes; mIoU,
pixel accuracy), ``depth`` (absolute and relative error) and ``normal`` (angle mean, median, and
the fractions within 11.25°, 22.5° and 30°).
"""

from __future__ import annotations

from mtl.data.npy_folders import NpyFoldersDataModule
from mtl.dense_tasks import DepthTask, SegmentationTask, SurfaceNormalTask
from mtl.tasks import INPUT_KEY

CLASSES = 13


class NYUv2(NpyFoldersDataModule):
    """NYUv2 from ``root`` (``train`` and ``val``, MTAN's preprocessed release)."""

    name = "NYUv2"
    url = "https://www.dropbox.com/s/p2nn02wijg7peiy/nyuv2.zip?dl=1"  # lorenmt/mtan's README
    folders = {INPUT_KEY: "image", "segmentation": "label", "depth": "depth", "normal": "normal"}

    def __init__(self, root: str, **options) -> None:
        super().__init__(root, **options)
        self.tasks = [SegmentationTask("segmentation", CLASSES), DepthTask("depth"), SurfaceNormalTask("normal")]
