"""Copy the training references the tests need from shared/reference/train into this folder.

    python tests/data/train/extract_reference.py ../shared/reference/train

Per case the two input photos become PNGs under ``images/`` (shared by every variant: the
script checks they are identical), and ``<variant>/<case>.npz`` keeps the inputs' boxes and
classes, the settings, every loss, every gradient norm and the full gradients of the
parameters small enough to keep each file under 2 MB.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
#: Full gradients above this many bytes are dropped (the 256x256x3x3 convs, RetinaNet's cls_score).
MAX_FULL_GRAD_BYTES = 2_000_000
MAX_FILE_BYTES = 2_000_000


def extract(source: Path) -> None:
    for path in sorted(source.glob("*/*.npz")):
        variant, case = path.parent.name, path.stem
        with np.load(path) as data:
            ref = {k: data[k] for k in data.files}
        for i in (0, 1):
            image_path = HERE / "images" / f"{case.split('_')[0]}_image{i}.png"
            image_path.parent.mkdir(exist_ok=True)
            if image_path.exists():
                if not np.array_equal(np.asarray(Image.open(image_path).convert("RGB")), ref[f"image{i}"]):
                    raise ValueError(f"{path}: image{i} differs from {image_path}; give this case its own name")
            else:
                Image.fromarray(ref[f"image{i}"]).save(image_path, optimize=True)
        kept = {k: v for k, v in ref.items() if not k.startswith(("image", "grad__", "full_grad_names"))}
        names = [n for n in ref["full_grad_names"] if ref["grad__" + n].nbytes <= MAX_FULL_GRAD_BYTES]
        kept["full_grad_names"] = np.array(names)
        kept.update({"grad__" + n: ref["grad__" + n] for n in names})
        out = HERE / variant / f"{case}.npz"
        out.parent.mkdir(exist_ok=True)
        np.savez_compressed(out, **kept)
        if out.stat().st_size > MAX_FILE_BYTES:
            raise ValueError(f"{out} is {out.stat().st_size} bytes; lower MAX_FULL_GRAD_BYTES")
        print(f"{out.relative_to(HERE)}: {out.stat().st_size} bytes, full grads of {len(names)} parameters")


if __name__ == "__main__":
    extract(Path(sys.argv[1]))
