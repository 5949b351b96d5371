"""A tiny CelebA in the release's on-disk format, generated (never real images).

    python -m tests.celeba_fixtures outputs/celeba-fixture [--layout release]

``img_align_celeba/<000001..>.jpg`` (RGB JPEGs, 178 wide and 218 high as released, or smaller),
``list_attr_celeba.txt`` (the count, the 40 attribute names, then one line per image of 1 / -1
values) and ``list_eval_partition.txt`` (image and split 0/1/2), all in ``root`` (torchvision's
layout) or under ``Img/``, ``Anno/`` and ``Eval/`` (the release's).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

ATTRIBUTES = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair Blond_Hair "
    "Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup High_Cheekbones "
    "Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose Receding_Hairline Rosy_Cheeks "
    "Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young"
).split()
SPLITS = (0, 0, 0, 0, 1, 1, 2, 2)
"""The split of each fixture image: four training, two validation, two test images."""


def write_celeba(root: Path, layout: str = "torchvision", size: tuple[int, int] = (22, 18), seed: int = 0) -> Path:
    """The fixture under ``root``; ``size`` is (height, width) of the JPEGs."""
    folders = {"torchvision": ("", "", ""), "release": ("Img", "Anno", "Eval")}[layout]
    images, annotations, evaluation = (root / folder for folder in folders)
    (images / "img_align_celeba").mkdir(parents=True, exist_ok=True)
    annotations.mkdir(parents=True, exist_ok=True)
    evaluation.mkdir(parents=True, exist_ok=True)
    generator = np.random.default_rng(seed)
    names = [f"{index:06d}.jpg" for index in range(1, len(SPLITS) + 1)]
    for name in names:
        pixels = generator.integers(0, 256, (*size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / "img_align_celeba" / name, quality=95)
    values = generator.choice(["1", "-1"], size=(len(names), len(ATTRIBUTES)))
    lines = [str(len(names)), " ".join(ATTRIBUTES), *(f"{name} " + " ".join(f"{value:>2}" for value in row) for name, row in zip(names, values))]
    (annotations / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    (evaluation / "list_eval_partition.txt").write_text("".join(f"{name} {split}\n" for name, split in zip(names, SPLITS)))
    return root


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path)
    parser.add_argument("--layout", choices=["torchvision", "release"], default="torchvision")
    args = parser.parse_args()
    print(write_celeba(args.root, args.layout))
