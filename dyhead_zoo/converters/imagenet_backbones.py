"""Convert the ImageNet backbone weights the official runs started from into our key layout.

    python -m dyhead_zoo.converters.imagenet_backbones resnet50 --out resnet50_imagenet.safetensors
    python -m dyhead_zoo.converters.imagenet_backbones swin_t --input swin_tiny_patch4_window7_224.pth --out swin_t.safetensors

Without ``--input`` the file is downloaded once (detectron2's MSRA ``R-50.pkl``; timm's Swin-T
ImageNet-1k ``model.safetensors`` from the Hub, else the official ``.pth``). The result holds
the ResNet-50 / Swin-T body in our keys (checked strictly) and can be passed back to
``dyhead-zoo train --from-scratch PATH``. The conversion itself lives in
:mod:`dyhead_zoo.weights.imagenet`, so an installed package can train without this folder.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dyhead_zoo.weights.imagenet import (  # noqa: F401 - re-exported for converter users
    IMAGENET_WEIGHTS,
    convert_imagenet_state_dict,
    convert_msra_resnet50,
    convert_swin_tiny,
    fetch_imagenet_weights,
    load_imagenet_backbone,
)

_VARIANT_OF = {"resnet50": "dyhead_r50_atss_fpn_1x", "swin_t": "dyhead_swint_atss_fpn_2x_ms"}


def convert_file(backbone: str, out: str | Path, source: str | Path | None = None, progress: bool = True) -> Path:
    """Write ``backbone``'s ImageNet weights (from ``source`` or downloaded) in our keys to ``out`` (.safetensors)."""
    from safetensors.torch import save_file

    from dyhead_zoo.registry import create_model
    from dyhead_zoo.weights.imagenet import bottom_up_of

    if backbone not in _VARIANT_OF:
        raise ValueError(f"unknown backbone {backbone!r}; choose one of {sorted(_VARIANT_OF)}")
    model = create_model(_VARIANT_OF[backbone])
    used = load_imagenet_backbone(model, source, progress)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in bottom_up_of(model).state_dict().items()}
    save_file(state, str(out), metadata={"backbone": backbone, "source": str(used)})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("backbone", choices=sorted(_VARIANT_OF))
    parser.add_argument("--input", help="a local copy of the ImageNet file (default: download it)")
    parser.add_argument("--out", required=True, help="the .safetensors file to write")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        path = convert_file(args.backbone, args.out, args.input, progress=not args.no_progress)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
