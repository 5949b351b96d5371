"""A tiny Office-31 or Office-Home in the releases' on-disk format, with split lists in LibMTL's
format, generated (never real images).

    python -m tests.office_fixtures outputs/office31-fixture [--benchmark office_home]

Office-31: ``<root>/<domain>/images/<class>/frame_<i>.jpg``; Office-Home:
``<root>/<domain>/<class>/<i>.jpg`` with the release's folder "Real World". ``<root>/data_txt/``
holds LibMTL's lists ``<domain>_{train,val,test}.txt``, lines ``<path under root> <label>`` (the
Office-Home paths under ``Real_World/``, as LibMTL's), labels numbered against the alphabetical
order of the class folders, as LibMTL's are not alphabetical either. Every class of a domain has
``images_per_class`` images (one more in the first domain, so the domains differ in size): the
last two go to the validation and the test list, the others to the training list.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

BENCHMARKS = {
    "office31": {"domains": ("amazon", "dslr", "webcam"), "classes": 31, "images": "images"},
    "office_home": {"domains": ("Art", "Clipart", "Product", "Real World"), "classes": 65, "images": ""},
}


def fixture_label(rank: int, classes: int) -> int:
    """The list label of the class folder of alphabetical ``rank``."""
    return classes - 1 - rank


def write_office(root: Path, benchmark: str = "office31", images_per_class: int = 3, size: tuple[int, int] = (10, 12), seed: int = 0) -> tuple[Path, Path]:
    """``(root, the folder of the split lists)``; ``size`` is (height, width) of the JPEGs."""
    layout = BENCHMARKS[benchmark]
    generator = np.random.default_rng(seed)
    lists = root / "data_txt"
    lists.mkdir(parents=True, exist_ok=True)
    for index, domain in enumerate(layout["domains"]):
        lines: dict[str, list[str]] = {"train": [], "val": [], "test": []}
        count = images_per_class + (index == 0)
        for rank in range(layout["classes"]):
            folder = Path(domain, layout["images"], f"class_{rank:02d}")
            (root / folder).mkdir(parents=True, exist_ok=True)
            for image in range(count):
                name = folder / f"frame_{image:04d}.jpg"
                Image.fromarray(generator.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / name, quality=95)
                split = "train" if image < count - 2 else ("val" if image == count - 2 else "test")
                listed = Path(domain.replace(" ", "_"), *name.parts[1:])
                lines[split].append(f"{listed.as_posix()} {fixture_label(rank, layout['classes'])}")
        for split, entries in lines.items():
            (lists / f"{domain.replace(' ', '_')}_{split}.txt").write_text("\n".join(entries) + "\n")
    return root, lists


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path)
    parser.add_argument("--benchmark", choices=sorted(BENCHMARKS), default="office31")
    args = parser.parse_args()
    print(*write_office(args.root, args.benchmark))
