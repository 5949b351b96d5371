"""Multi-task models: shared encoders, task heads, and the architectures that join them."""

from mtl.models.cross_stitch import CrossStitch
from mtl.models.dselect_k import DSelectK
from mtl.models.encoders import MLP, CelebACNN, Encoder, LeNet, ResNet
from mtl.models.hard_sharing import HardParameterSharing
from mtl.models.heads import MLPHead
from mtl.models.mmoe import MMoE
from mtl.models.mtan import MTAN
from mtl.models.ple import PLE
from mtl.models.segnet import DenseHead, SegNet
from mtl.models.segnet_mtan import SegNetMTAN

__all__ = [
    "MLP",
    "CelebACNN",
    "CrossStitch",
    "DSelectK",
    "DenseHead",
    "Encoder",
    "HardParameterSharing",
    "LeNet",
    "MLPHead",
    "MMoE",
    "MTAN",
    "PLE",
    "ResNet",
    "SegNet",
    "SegNetMTAN",
]
