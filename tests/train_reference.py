"""The official training references (tests/data/train) and the check of a training step against them.

A reference case is one forward/backward pass of the official implementation in training mode
(see tests/data/train/extract_reference.py and shared/reference/train/README.md): two photos
padded into one batch, their ground truth, the random checkpoint's seed, every loss term, the
L2 norm of every parameter's gradient and the full gradients of a few parameters.

    case = load_case("dyhead_r50_atss_fpn_1x", "case0")
    model = build_train_model(case)
    losses, grads = run_train_step(model, case)
    report = compare_to_reference(case, losses, grads)
    report.assert_ok()
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch import Tensor

DATA = Path(__file__).parent / "data" / "train"
sys.path.insert(0, str(Path(__file__).parent))

from make_checkpoint import make  # noqa: E402

import dyhead_zoo  # noqa: E402
from dyhead_zoo.data.preprocess import normalize_and_pad, to_model_tensor  # noqa: E402

#: The issue's tolerances.
LOSS_RTOL = 1e-4
GRAD_NORM_RTOL = 1e-3
#: Gradient norms below this fraction of the largest are only checked to stay that small.
GRAD_NORM_FLOOR = 1e-6
FULL_GRAD_RTOL = 1e-3
#: Absolute part of the full-gradient check, as a fraction of the reference's largest magnitude:
#: elements that nearly cancel cannot keep 1e-3 relative in float32.
FULL_GRAD_ATOL = 1e-5

#: Official config keys the references override -> (section of ModelConfig or None, field).
CONFIG_KEYS = {
    "MODEL.SWINT.DROP_PATH_RATE": (None, "drop_path_rate"),
    "MODEL.RPN.BATCH_SIZE_PER_IMAGE": ("rpn", "batch_size_per_image"),
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE": ("roi_heads", "batch_size_per_image"),
}


@dataclass
class TrainCase:
    """One recorded official training step (see the module docstring)."""

    variant: str
    case: str
    images: list[np.ndarray]  # HxWx3 uint8 RGB, already resized
    targets: list[dict[str, Tensor]]  # boxes (K, 4) float32 XYXY resized pixels, labels (K,) int64
    ckpt_seed: int
    torch_seed: int
    config_opts: dict[str, str]  # official key -> value
    padded_hw: tuple[int, int]
    size_divisibility: int
    losses: dict[str, float]  # every loss term the official model returns
    loss_normalizer: float | None  # RetinaNet's running normaliser, else None
    grad_norms: dict[str, float]  # every trainable parameter, state_dict order
    grad_none: set[str]  # parameters no gradient reached
    full_grads: dict[str, Tensor]  # float32
    largest_grad_norm: float = 0.0  # over every parameter (the floor of the norm check)


def train_cases() -> list[tuple[str, str]]:
    """(variant, case) of every reference under tests/data/train."""
    return [(p.parent.name, p.stem) for p in sorted(DATA.glob("*/*.npz"))]


def load_case(variant: str, case: str) -> TrainCase:
    """Read ``tests/data/train/<variant>/<case>.npz`` and its images."""
    with np.load(DATA / variant / f"{case}.npz") as data:
        ref = {k: data[k] for k in data.files}
    image_stem = case.split("_")[0]
    images = [np.asarray(Image.open(DATA / "images" / f"{image_stem}_image{i}.png").convert("RGB")) for i in (0, 1)]
    targets = [{"boxes": torch.from_numpy(ref[f"boxes{i}"]).float(),
                "labels": torch.from_numpy(ref[f"classes{i}"]).long()} for i in (0, 1)]
    opts = [str(v) for v in ref["config_opts"]]
    names = [str(n) for n in ref["param_names"]]
    return TrainCase(
        variant=variant,
        case=case,
        images=images,
        targets=targets,
        ckpt_seed=int(ref["ckpt_seed"]),
        torch_seed=int(ref["torch_seed"]),
        config_opts=dict(zip(opts[0::2], opts[1::2])),
        padded_hw=(int(ref["padded_hw"][0]), int(ref["padded_hw"][1])),
        size_divisibility=int(ref["size_divisibility"]),
        losses={k: float(ref[k]) for k in ref if k.startswith("loss_") and k != "loss_normalizer"},
        loss_normalizer=float(ref["loss_normalizer"]) if "loss_normalizer" in ref else None,
        grad_norms=dict(zip(names, ref["grad_norm"].tolist())),
        grad_none={n for n, none in zip(names, ref["grad_none"].tolist()) if none},
        full_grads={str(n): torch.from_numpy(ref["grad__" + str(n)]) for n in ref["full_grad_names"]},
        largest_grad_norm=float(ref["grad_norm"].max()),
    )


def case_config(case: TrainCase, **changes) -> dyhead_zoo.ModelConfig:
    """The variant's config with the reference's official overrides applied, then ``changes``."""
    config = dyhead_zoo.get_config(case.variant)
    for key, value in case.config_opts.items():
        if key not in CONFIG_KEYS:
            raise KeyError(f"no ModelConfig field known for the official key {key}; add it to CONFIG_KEYS")
        section, name = CONFIG_KEYS[key]
        target = config if section is None else getattr(config, section)
        if not hasattr(target, name):
            raise AttributeError(f"{type(target).__name__} has no field {name!r} (official {key})")
        current = getattr(target, name)
        parsed = type(current)(float(value)) if isinstance(current, (int, float)) else value
        target = dataclasses.replace(target, **{name: parsed})
        config = target if section is None else dataclasses.replace(config, **{section: target})
    return dataclasses.replace(config, **changes) if changes else config


def build_train_model(case: TrainCase, **config_changes) -> dyhead_zoo.DyHeadDetector:
    """The variant with the case's overrides and ``make_checkpoint`` weights (strict), in train mode."""
    model = dyhead_zoo.create_model(case.variant, config=case_config(case, **config_changes))
    state = make(str(Path(__file__).parent / "data" / f"{case.variant}.keys.json"), case.ckpt_seed)
    model.load_state_dict(state, strict=True)
    return model.train()


def build_batch(case: TrainCase, config: dyhead_zoo.ModelConfig) -> tuple[Tensor, list[tuple[int, int]]]:
    """The padded, normalised batch as the reference README builds it, and the image sizes."""
    tensors = [to_model_tensor(image, config.input) for image in case.images]
    batch, sizes = normalize_and_pad(tensors, config.input)
    if tuple(batch.shape[-2:]) != case.padded_hw:
        raise AssertionError(f"padded batch {tuple(batch.shape[-2:])} != reference {case.padded_hw}")
    return batch, sizes


@contextlib.contextmanager
def dcn_backend(name: str | None):
    """Force the deformable-conv backend (``$DYHEAD_DCN_BACKEND``) inside the block; None keeps it."""
    from dyhead_zoo.ops.deform_conv import ENV_VAR

    saved = os.environ.get(ENV_VAR)
    if name is not None:
        os.environ[ENV_VAR] = name
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(ENV_VAR, None)
        else:
            os.environ[ENV_VAR] = saved


def run_train_step(model: dyhead_zoo.DyHeadDetector, case: TrainCase, backend: str | None = None
                   ) -> tuple[dict[str, Tensor], dict[str, Tensor | None]]:
    """``torch.manual_seed``, the training forward, ``sum(losses).backward()``.

    Returns the loss dict (detached) and every named parameter's gradient (None where no
    gradient arrived). Gradients are zeroed first so the model can be reused.
    """
    model.zero_grad(set_to_none=True)
    batch, sizes = build_batch(case, model.config)
    targets = [{k: v.clone() for k, v in t.items()} for t in case.targets]
    with dcn_backend(backend):
        torch.manual_seed(case.torch_seed)
        losses = model(batch, sizes, targets)
        sum(losses.values()).backward()
    grads = {name: None if p.grad is None else p.grad.detach().clone() for name, p in model.named_parameters()}
    return {k: v.detach() for k, v in losses.items()}, grads


@dataclass
class Comparison:
    """Worst relative differences against a reference and every tolerance failure."""

    worst_loss: float = 0.0
    worst_grad_norm: float = 0.0
    worst_full_grad: float = 0.0  # max |ours - ref| / (|ref| + atol)
    failures: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"losses {self.worst_loss:.2e}, grad norms {self.worst_grad_norm:.2e}, "
                f"full grads {self.worst_full_grad:.2e}")

    def assert_ok(self) -> None:
        if self.failures:
            shown = "\n  ".join(self.failures[:30])
            raise AssertionError(f"{len(self.failures)} mismatches ({self.summary()}):\n  {shown}")


def _relative(ours: float, ref: float) -> float:
    return abs(ours - ref) / max(abs(ref), 1e-30)


def compare_to_reference(case: TrainCase, losses: dict[str, Tensor], grads: dict[str, Tensor | None],
                         parameters: Callable[[str], bool] | None = None) -> Comparison:
    """Check losses, gradient norms, missing gradients and full gradients with the issue's tolerances.

    ``parameters`` restricts the gradient checks to the names it accepts (default: all).
    """
    report = Comparison()
    if parameters is not None:
        grads = {n: g for n, g in grads.items() if parameters(n)}
        case = dataclasses.replace(
            case, grad_norms={n: v for n, v in case.grad_norms.items() if parameters(n)},
            full_grads={n: v for n, v in case.full_grads.items() if parameters(n)})
    if set(losses) != set(case.losses):
        report.failures.append(f"loss names {sorted(losses)} != reference {sorted(case.losses)}")
    for name, ref in case.losses.items():
        if name in losses:
            rel = _relative(float(losses[name]), ref)
            report.worst_loss = max(report.worst_loss, rel)
            if rel > LOSS_RTOL:
                report.failures.append(f"{name}: {float(losses[name])!r} vs {ref!r} (rel {rel:.2e})")
    if set(grads) != set(case.grad_norms):
        report.failures.append(f"parameters differ: extra {sorted(set(grads) - set(case.grad_norms))[:5]}, "
                               f"missing {sorted(set(case.grad_norms) - set(grads))[:5]}")
    largest = case.largest_grad_norm
    for name, ref in case.grad_norms.items():
        grad = grads.get(name)
        if name in case.grad_none:
            if grad is not None:
                report.failures.append(f"{name}: got a gradient, the reference has none")
            continue
        if grad is None:
            report.failures.append(f"{name}: no gradient, reference norm {ref:.3e}")
            continue
        norm = float(grad.double().norm())
        if ref > GRAD_NORM_FLOOR * largest:
            rel = _relative(norm, ref)
            report.worst_grad_norm = max(report.worst_grad_norm, rel)
            if rel > GRAD_NORM_RTOL:
                report.failures.append(f"grad norm {name}: {norm:.6e} vs {ref:.6e} (rel {rel:.2e})")
        elif norm > GRAD_NORM_FLOOR * largest:
            report.failures.append(f"grad norm {name}: {norm:.3e}, reference {ref:.3e} is below the floor")
    for name, ref in case.full_grads.items():
        grad = grads.get(name)
        if grad is None:
            continue  # reported above
        ref = ref.double()
        atol = FULL_GRAD_ATOL * float(ref.abs().max())
        err = (grad.double() - ref).abs()
        worst = float((err / (ref.abs() + atol + 1e-30)).max())
        report.worst_full_grad = max(report.worst_full_grad, worst)
        if not torch.allclose(grad.double(), ref, rtol=FULL_GRAD_RTOL, atol=atol):
            report.failures.append(f"full grad {name}: max abs err {float(err.max()):.3e}, "
                                   f"worst err/(|ref|+atol) {worst:.2e}")
    return report
