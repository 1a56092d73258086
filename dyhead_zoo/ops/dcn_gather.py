"""Modulated deformable conv as "gather the bilinear corners, then one dense 1x1 conv".

For every output position and tap the sampled input vector is a weighted sum of four rows of
a channels-last copy of the input, so :func:`torch.nn.functional.embedding_bag` (mode
``"sum"`` with per-sample weights) builds the whole deformable im2col matrix in one fused
pass. That matrix, laid out (positions, taps * channels), *is* a channels-last image with
``9*C`` channels, and a 1x1 :func:`~torch.nn.functional.conv2d` over it is the matrix
product; on CPU that conv runs in oneDNN, which is several times faster than the BLAS
``addmm`` on some machines. The input is padded with a one-pixel zero border so that every
corner of a sample inside ``(-1, H) x (-1, W)`` is a valid row and no per-corner test is
needed; samples outside that box get weight zero, which is torchvision's (and the official
kernel's) rule. Rows are processed in chunks that bound the im2col memory.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor

#: im2col bytes per chunk; big enough that the 1x1 conv runs at full speed, small enough to
#: keep batch-8 P3 (8 x 100 x 168 positions x 9 taps x 256 channels = 1.2 GB) out of memory.
CHUNK_BYTES = 32 << 20


def _sampling(offset: Tensor, mask: Tensor, height: int, width: int, stride: int, padding: int,
              kernel: int) -> tuple[Tensor, Tensor]:
    """Table rows and weights of the four bilinear corners for every position and tap.

    ``offset`` (N, 2*k*k, h, w) and ``mask`` (N, k*k, h, w), both float32 or float64, in the
    layout of torchvision. Returns ``rows`` int64 and ``weights`` in the offset's dtype, both (N*h*w*k*k, 4), indexing
    a zero-bordered (N, height+2, width+2) channels-last table; the weights already include the
    mask, and are zero for samples that torchvision treats as outside the image.
    """
    n, _, h, w = offset.shape
    kk = kernel * kernel
    dev = offset.device
    tap = torch.arange(kk, device=dev)
    grid_y = torch.arange(h, device=dev).view(h, 1, 1) * stride + (tap // kernel).view(1, 1, kk)
    grid_x = torch.arange(w, device=dev).view(1, w, 1) * stride + (tap % kernel).view(1, 1, kk)
    grid = torch.stack(torch.broadcast_tensors(grid_y, grid_x), -1) - padding  # (h, w, taps, yx)
    # Sample positions (N, h, w, taps, yx), shifted by the one-pixel border of the table.
    pos = offset.reshape(n, kk, 2, h, w).permute(0, 3, 4, 1, 2).contiguous() + (grid + 1).to(offset.dtype)
    limit = torch.tensor([height + 1, width + 1], dtype=offset.dtype, device=dev)
    inside = ((pos > 0) & (pos < limit)).all(-1)
    # Outside samples (NaN included) go to the zero border so their rows stay in the table.
    pos = torch.where(inside.unsqueeze(-1), pos, 0.0)
    low = pos.floor()
    frac = pos - low
    lerp = torch.stack([1 - frac, frac], -1)  # (N, h, w, taps, yx, low/high)
    m = torch.where(inside, mask.reshape(n, kk, h, w).permute(0, 2, 3, 1).contiguous(), 0.0)
    weights = lerp[..., 0, :, None] * lerp[..., 1, None, :] * m[..., None, None]
    pw = width + 2
    low = low.long()
    first = low[..., 0] * pw + low[..., 1] + (torch.arange(n, device=dev) * ((height + 2) * pw)).view(n, 1, 1, 1)
    corner = torch.tensor([0, 1, pw, pw + 1], device=dev)
    return (first.unsqueeze(-1) + corner).view(-1, 4), weights.reshape(-1, 4)


def deform_conv2d_gather(x: Tensor, offset: Tensor, mask: Tensor, weight: Tensor, bias: Tensor | None,
                         stride: int = 1, padding: int = 1, chunk_bytes: int = CHUNK_BYTES) -> Tensor:
    """DCNv2 by corner gather + 1x1 conv; same arguments and result as torchvision's op.

    ``x`` (N, C, H, W), ``offset`` (N, 2*k*k, h, w), ``mask`` (N, k*k, h, w) already sized for
    the output (h, w), ``weight`` (O, C, k, k), optional ``bias`` (O,). Sample positions and
    bilinear weights are always computed in float32 (float64 for float64 input). A float16 or
    bfloat16 ``x`` is gathered and multiplied in its own type (float32 accumulation) where the
    device has fast kernels for it (:func:`half_is_fast`), else in float32; autocast is
    suspended inside. Returns (N, O, h, w), contiguous, in ``x``'s dtype. Differentiable with
    respect to all inputs, except at the measure-zero set of integer sample positions.
    """
    dtype = x.dtype
    n, c, height, width = x.shape
    o, _, kernel, _ = weight.shape
    h = (height + 2 * padding - kernel) // stride + 1
    w = (width + 2 * padding - kernel) // stride + 1
    kk = kernel * kernel
    with torch.autocast(x.device.type, enabled=False), _exact_fp32(x.device):
        exact = torch.float64 if dtype == torch.float64 else torch.float32
        work = dtype if dtype in (torch.float16, torch.bfloat16) and half_is_fast(x.device, dtype) else exact
        x, weight = x.to(work), weight.to(work)
        bias = None if bias is None else bias.to(work)
        table = x.new_zeros(n, height + 2, width + 2, c)
        table[:, 1:-1, 1:-1] = x.permute(0, 2, 3, 1)
        table = table.view(-1, c)
        rows, weights = _sampling(offset.to(exact), mask.to(exact), height, width, stride, padding, kernel)
        weights = weights.to(work)
        # (O, C, k, k) -> (O, k*k*C, 1, 1), tap-major to match the im2col rows.
        w1x1 = weight.permute(0, 2, 3, 1).reshape(o, kk * c, 1, 1)
        out = x.new_empty(n, o, h, w)
        for n0, n1, r0, r1 in _chunks(n, h, w * kk * c * table.element_size(), chunk_bytes):
            p0, p1 = (n0 * h + r0) * w * kk, ((n1 - 1) * h + r1) * w * kk
            cols = F.embedding_bag(rows[p0:p1], table, per_sample_weights=weights[p0:p1], mode="sum")
            # (positions, k*k*C) row-major is a channels-last image with k*k*C channels.
            image = cols.view(n1 - n0, r1 - r0, w, kk * c).permute(0, 3, 1, 2)
            out[n0:n1, :, r0:r1] = F.conv2d(image, w1x1, bias)
    return out.to(dtype)


def half_is_fast(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether ``dtype`` (float16/bfloat16) convs and gathers are fast on ``device``: always on
    CUDA; on CPU when oneDNN has native kernels for it (AVX512-BF16 / AMX / AVX512-FP16)."""
    if device.type == "cuda":
        return True
    if device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    if dtype == torch.bfloat16:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())


def _chunks(n: int, h: int, row_bytes: int, budget: int) -> list[tuple[int, int, int, int]]:
    """(first image, end image, first row, end row) chunks of at most ``budget`` im2col bytes.

    Whole images are grouped when one fits; otherwise each image is cut into bands of rows.
    """
    if h * row_bytes <= budget:
        step = max(1, budget // (h * row_bytes))
        return [(i, min(n, i + step), 0, h) for i in range(0, n, step)]
    step = max(1, budget // row_bytes)
    return [(i, i + 1, r, min(h, r + step)) for i in range(n) for r in range(0, h, step)]


@contextlib.contextmanager
def _exact_fp32(device: torch.device):
    """Keep cuDNN from running the float32 1x1 conv in TF32 (it would miss parity)."""
    if device.type != "cuda":
        yield
        return
    conv = torch.backends.cudnn.conv
    saved = conv.fp32_precision
    conv.fp32_precision = "ieee"
    try:
        yield
    finally:
        conv.fp32_precision = saved
