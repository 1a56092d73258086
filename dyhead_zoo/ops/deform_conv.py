"""Modulated deformable 3x3 convolution (DCNv2), behind one function so backends can change.

The official DyHead calls a CUDA kernel that reads its offset and mask as raw memory laid out
for the *output* size. When the offset comes from a larger pyramid level (``DyConv[0]``), that
kernel reads the leading ``18*h*w`` values of each batch element's offset (and ``9*h*w`` of
its mask). :func:`fit_offset_to_output` reproduces that read so results match exactly.

Backends (:data:`BACKENDS`): ``torchvision`` (``torchvision.ops.deform_conv2d``, the
reference), ``gather`` (corner gather + oneDNN/cuDNN 1x1 conv, :mod:`dyhead_zoo.ops.dcn_gather`)
and ``triton`` (one fused CUDA kernel, :mod:`dyhead_zoo.ops.dcn_triton`). ``"auto"``, the default,
takes the fastest one that passes a start-up self-check against torchvision on the device;
force one with the ``backend`` argument or ``$DYHEAD_DCN_BACKEND``.

Training: ``torchvision`` and ``gather`` are differentiable (gradients for the input, offset,
mask, weight and bias; for an offset read larger than the output the gradient lands in the
leading memory that was read, zero elsewhere). ``triton`` is forward-only, so whenever
gradients are recorded the automatic choice falls back to :func:`training_backend`.
"""
from __future__ import annotations

import os
import statistics
import time
import warnings
from typing import Callable

import torch
from torch import Tensor
from torchvision.ops import deform_conv2d as _tv_deform_conv2d

Backend = Callable[[Tensor, Tensor, Tensor, Tensor, "Tensor | None", int, int], Tensor]


def output_size(height: int, width: int, kernel: int, stride: int, padding: int) -> tuple[int, int]:
    """Spatial size of a (deformable) convolution's output."""
    return (height + 2 * padding - kernel) // stride + 1, (width + 2 * padding - kernel) // stride + 1


def fit_offset_to_output(offset: Tensor, mask: Tensor, out_hw: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Reinterpret per-sample offset/mask memory as ``[C, h, w]`` for an output of size ``out_hw``.

    ``offset``: (N, 2*K, H, W); ``mask``: (N, K, H, W), with H*W >= h*w. Returns tensors of
    shape (N, 2*K, h, w) and (N, K, h, w) holding each sample's leading values in C order,
    which is what the official CUDA kernel reads. Unchanged when the sizes already agree.
    """
    h, w = out_hw
    if offset.shape[-2:] == (h, w) and mask.shape[-2:] == (h, w):
        return offset, mask
    n, c_off = offset.shape[:2]
    c_mask = mask.shape[1]
    if offset.shape[-2] * offset.shape[-1] < h * w or mask.shape[-2] * mask.shape[-1] < h * w:
        raise ValueError(
            f"offset {tuple(offset.shape)} / mask {tuple(mask.shape)} hold fewer positions than the "
            f"conv output {h}x{w}; compute them at the output's level or a larger one"
        )
    offset = offset.reshape(n, -1)[:, : c_off * h * w].reshape(n, c_off, h, w)
    mask = mask.reshape(n, -1)[:, : c_mask * h * w].reshape(n, c_mask, h, w)
    return offset, mask


def _torchvision_backend(x: Tensor, offset: Tensor, mask: Tensor, weight: Tensor, bias: Tensor | None,
                         stride: int, padding: int) -> Tensor:
    dtype = x.dtype
    if dtype == torch.bfloat16:  # torchvision's kernels have no bfloat16 path
        x, offset, mask, weight = x.float(), offset.float(), mask.float(), weight.float()
        bias = None if bias is None else bias.float()
    out = _tv_deform_conv2d(x, offset.to(x.dtype), weight.to(x.dtype), None if bias is None else bias.to(x.dtype),
                            stride=stride, padding=padding, mask=mask.to(x.dtype))
    return out.to(dtype)


def _gather_backend(x: Tensor, offset: Tensor, mask: Tensor, weight: Tensor, bias: Tensor | None,
                    stride: int, padding: int) -> Tensor:
    from dyhead_zoo.ops.dcn_gather import deform_conv2d_gather

    return deform_conv2d_gather(x, offset, mask, weight, bias, stride, padding)


def _triton_backend(x: Tensor, offset: Tensor, mask: Tensor, weight: Tensor, bias: Tensor | None,
                    stride: int, padding: int) -> Tensor:
    from dyhead_zoo.ops.dcn_triton import deform_conv2d_triton

    return deform_conv2d_triton(x, offset, mask, weight, bias, stride, padding)


def _triton_available(device: torch.device) -> bool:
    from dyhead_zoo.ops.dcn_triton import available

    return available(device)


BACKENDS: dict[str, Backend] = {
    "torchvision": _torchvision_backend,
    "gather": _gather_backend,
    "triton": _triton_backend,
}
ENV_VAR = "DYHEAD_DCN_BACKEND"
AUTO = "auto"

#: Which backends can run where (before the self-check), and which support autograd.
_RUNS_ON: dict[str, Callable[[torch.device], bool]] = {
    "torchvision": lambda device: device.type in ("cpu", "cuda"),
    "gather": lambda device: True,
    "triton": _triton_available,
}
_DIFFERENTIABLE = frozenset({"torchvision", "gather"})
#: Automatic choice on CPU, fastest first (benchmarks/dcn.py, 2 threads: gather is 6-7x faster
#: than torchvision at P3-P5 and 2-4x at P6-P7). Elsewhere every backend that passes the
#: self-check is timed once and the fastest wins.
_CPU_ORDER = ("gather", "torchvision")
_SELF_CHECK_TOLERANCE = 1e-4  # of the output's largest magnitude, in float32
_auto_cache: dict[tuple[str, bool], str] = {}
_check_cache: dict[tuple[str, str], bool] = {}


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """Backends that can run on ``device`` (before the self-check), in :data:`BACKENDS` order."""
    device = torch.device(device)
    return [name for name in BACKENDS if _RUNS_ON[name](device)]


def self_check(name: str, device: torch.device | str = "cpu") -> bool:
    """Whether backend ``name`` matches torchvision's float64 CPU result on ``device``.

    A small random case in float32, stride 1 and 2, with offsets that push samples outside the
    image; passes when the largest error is within 1e-4 of the output's scale. Cached per
    backend and device; a backend that raises fails.
    """
    device = torch.device(device)
    key = (name, str(device))
    if key not in _check_cache:
        _check_cache[key] = _run_self_check(name, device)
    return _check_cache[key]


def _run_self_check(name: str, device: torch.device) -> bool:
    if not _RUNS_ON[name](device):
        return False
    gen = torch.Generator().manual_seed(0)
    try:
        with torch.no_grad(), torch.autocast(device.type, enabled=False):
            for stride in (1, 2):
                x = torch.randn(2, 16, 11, 13, generator=gen, dtype=torch.float64)
                weight = torch.randn(8, 16, 3, 3, generator=gen, dtype=torch.float64)
                bias = torch.randn(8, generator=gen, dtype=torch.float64)
                h, w = output_size(11, 13, 3, stride, 1)
                offset = 3 * torch.randn(2, 18, h, w, generator=gen, dtype=torch.float64)
                mask = torch.rand(2, 9, h, w, generator=gen, dtype=torch.float64)
                ref = _tv_deform_conv2d(x, offset, weight, bias, stride=stride, padding=1, mask=mask)
                args = [t.float().to(device) for t in (x, offset, mask, weight, bias)]
                out = BACKENDS[name](*args, stride, 1).double().cpu()
                if out.shape != ref.shape or not (out - ref).abs().max() <= _SELF_CHECK_TOLERANCE * ref.abs().max():
                    warnings.warn(f"deformable-conv backend {name!r} disagrees with torchvision on {device} "
                                  f"(stride {stride}); it will not be chosen automatically", stacklevel=3)
                    return False
    except Exception as err:  # a backend that cannot run here is simply not chosen
        warnings.warn(f"deformable-conv backend {name!r} failed its self-check on {device}: {err!r}", stacklevel=3)
        return False
    return True


def _time_backend(name: str, device: torch.device) -> float:
    """Median seconds of one DyHead-sized conv (2 x 256 x 64 x 96) with backend ``name``."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 256, 64, 96, generator=gen).to(device)
    weight = (0.01 * torch.randn(256, 256, 3, 3, generator=gen)).to(device)
    bias = torch.zeros(256, device=device)
    offset = torch.randn(2, 18, 64, 96, generator=gen).to(device)
    mask = torch.rand(2, 9, 64, 96, generator=gen).to(device)
    times = []
    with torch.no_grad(), torch.autocast(device.type, enabled=False):
        for i in range(6):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            BACKENDS[name](x, offset, mask, weight, bias, 1, 1)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i >= 2:  # the first runs compile and autotune
                times.append(time.perf_counter() - start)
    return statistics.median(times)


def auto_backend(device: torch.device | str = "cpu", differentiable: bool = False) -> str:
    """The fastest backend on ``device`` that passes :func:`self_check` (cached per device).

    On CPU the order is fixed by measurement (``gather``, then ``torchvision``); on other
    devices all passing backends are timed once on a DyHead-sized conv. With
    ``differentiable=True`` only backends that support autograd are considered.
    """
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    key = (str(device), differentiable)
    if key not in _auto_cache:
        names = [n for n in available_backends(device) if not differentiable or n in _DIFFERENTIABLE]
        if device.type == "cpu":
            names = [n for n in _CPU_ORDER if n in names]
            chosen = next((n for n in names if self_check(n, device)), "torchvision")
        else:
            passing = [n for n in names if self_check(n, device)]
            if len(passing) > 1:
                chosen = min(passing, key=lambda n: _time_backend(n, device))
            else:
                chosen = passing[0] if passing else "torchvision"
        _auto_cache[key] = chosen
    return _auto_cache[key]


def resolve_backend(name: str | None = None, device: torch.device | str | None = None) -> str:
    """Backend to use: ``name`` if given, else ``$DYHEAD_DCN_BACKEND``, else ``"auto"``.

    ``"auto"`` picks :func:`auto_backend` for ``device`` (CPU when not given). A named backend
    that cannot run on ``device`` raises ``ValueError``.
    """
    name = name or os.environ.get(ENV_VAR) or AUTO
    if name == AUTO:
        return auto_backend("cpu" if device is None else device)
    if name not in BACKENDS:
        raise ValueError(f"unknown deformable-conv backend {name!r}; choose one of {sorted(BACKENDS)} or "
                         f"{AUTO!r} (argument or ${ENV_VAR})")
    if device is not None and not _RUNS_ON[name](torch.device(device)):
        raise ValueError(f"deformable-conv backend {name!r} cannot run on {device}; choose one of "
                         f"{available_backends(device)} or {AUTO!r} (argument or ${ENV_VAR})")
    return name


def is_differentiable(name: str) -> bool:
    """Whether backend ``name`` supports autograd (can be used for training)."""
    return name in _DIFFERENTIABLE


def training_backend(device: torch.device | str = "cpu") -> str:
    """The backend a training forward (gradients recorded) uses on ``device``.

    ``$DYHEAD_DCN_BACKEND`` when it names a differentiable backend, else the fastest
    differentiable one that passes its self-check (:func:`auto_backend`). A forward-only
    backend named in ``$DYHEAD_DCN_BACKEND`` raises ``ValueError`` during training.
    """
    name = resolve_backend(None, device)
    if is_differentiable(name):
        return name
    if (os.environ.get(ENV_VAR) or AUTO) != AUTO:
        raise ValueError(f"deformable-conv backend {name!r} (${ENV_VAR}) is forward-only and cannot train; "
                         f"unset ${ENV_VAR} or choose one of {sorted(_DIFFERENTIABLE)}")
    return auto_backend(device, differentiable=True)


def modulated_deform_conv2d(x: Tensor, offset: Tensor, mask: Tensor, weight: Tensor, bias: Tensor | None,
                            stride: int = 1, padding: int = 1, backend: str | None = None) -> Tensor:
    """DCNv2 on ``x`` (N, C, H, W) with a square kernel ``weight`` (O, C, k, k).

    ``offset`` (N, 2*k*k, H', W') holds (dy, dx) pairs per tap, ``mask`` (N, k*k, H', W') the
    modulation in [0, 1]; maps larger than the output are read as the official kernel does
    (see :func:`fit_offset_to_output`). ``backend`` names one of :data:`BACKENDS` or
    ``"auto"``; by default ``$DYHEAD_DCN_BACKEND``, else ``"auto"`` (see :func:`resolve_backend`).
    When gradients are needed the automatic choice skips forward-only backends. Returns
    (N, O, h, w) in ``x``'s dtype.
    """
    if x.dim() != 4 or weight.dim() != 4:
        raise ValueError(f"expected 4-D input and weight, got {tuple(x.shape)} and {tuple(weight.shape)}")
    out_hw = output_size(x.shape[-2], x.shape[-1], weight.shape[-1], stride, padding)
    offset, mask = fit_offset_to_output(offset, mask, out_hw)
    name = resolve_backend(backend, x.device)
    if name not in _DIFFERENTIABLE and torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (x, offset, mask, weight, bias)):
        if (backend or os.environ.get(ENV_VAR) or AUTO) != AUTO:
            raise ValueError(f"deformable-conv backend {name!r} is forward-only; run under torch.no_grad() / "
                             f"torch.inference_mode(), or choose one of {sorted(_DIFFERENTIABLE)}")
        name = auto_backend(x.device, differentiable=True)
    return BACKENDS[name](x, offset, mask, weight, bias, stride, padding)
