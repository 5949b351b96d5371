"""Sharpness-aware training: SAM, ASAM, GSAM wrap any step; F-MTL perturbs task by task.

``conf/sam/<name>.yaml`` names the class; ``sam=none`` (the default) trains without perturbation.
"""

from mtl.sam.base import Sharpness, TaskLosses, TaskPerturbation, WeightPerturbation
from mtl.sam.fmtl import FlatMTL
from mtl.sam.gsam import GSAM
from mtl.sam.sam import SAM

__all__ = ["GSAM", "SAM", "FlatMTL", "Sharpness", "TaskLosses", "TaskPerturbation", "WeightPerturbation"]
