"""Modulated deformable conv as one Triton kernel: bilinear sampling fused into the matmul.

An implicit GEMM: each program owns a tile of output positions (rows of the GEMM) and output
channels (columns). For every tap it loads the tap's offset and mask for its positions,
computes the four corners and weights once, and then walks the input channels in blocks,
building the sampled (positions x channels) tile from a channels-last copy of the input and
multiplying it with the matching block of the weight. The deformable im2col matrix never
reaches memory. Float32 products use ``input_precision="ieee"`` (no TF32) so results match
torchvision's kernel to float32 rounding; float16/bfloat16 inputs multiply in their own type
and accumulate in float32.

Triton is imported lazily; :func:`available` says whether this backend can run on a device.
``TRITON_INTERPRET=1`` (set before the first import of Triton) runs the kernel on CPU tensors,
which is how the tests check it on machines without a GPU.
"""
from __future__ import annotations

import contextlib
import functools
import os

import torch
from torch import Tensor

#: Launch settings: in the interpreter (CPU), for small problems on GPUs (not worth tuning, e.g.
#: the start-up self-check), and the autotuner's candidates for the rest.
_INTERPRET_CONFIG = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16}
_SMALL_CONFIG = {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32, "num_warps": 4}
_SMALL_PROBLEM = 1 << 16  # output elements
_GPU_CONFIGS = [  # (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages)
    (64, 128, 32, 4, 3),
    (128, 128, 32, 8, 3),
    (64, 256, 32, 8, 3),
    (128, 64, 32, 4, 3),
    (32, 256, 64, 8, 2),
    (64, 64, 64, 4, 2),
]


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.cache
def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # a broken install must not break the package; this backend just drops out
        return False
    return True


def available(device: torch.device | str) -> bool:
    """Whether this backend can run on ``device``: Triton importable and a CUDA device (or the
    interpreter on CPU)."""
    device = torch.device(device)
    if not _triton_importable():
        return False
    if device.type == "cuda":
        return torch.cuda.is_available()
    return device.type == "cpu" and interpreting()


@functools.cache
def _kernels():
    """Build the kernel on first use: (plain jit kernel, autotuned kernel)."""
    import triton
    import triton.language as tl

    @triton.jit
    def dcn_kernel(x_ptr, off_ptr, mask_ptr, w_ptr, b_ptr, out_ptr,
                   M, C, H, W, h, w, O, stride, padding,
                   KS: tl.constexpr, HAS_BIAS: tl.constexpr, IEEE: tl.constexpr, EMULATE: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        # x: (N, H, W, C) channels-last; off: (N, 2*KS*KS, h, w); mask: (N, KS*KS, h, w);
        # w: (KS*KS*C, O) tap-major; out: (N, O, h, w).
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        rk = tl.arange(0, BLOCK_K)
        m_ok = rm < M
        n_ok = rn < O
        hw = h * w
        img = (rm // hw).to(tl.int64)
        pix = rm % hw
        oy = pix // w
        ox = pix % w
        x_img = img * H * W * C
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for t in tl.static_range(KS * KS):
            dy = tl.load(off_ptr + (img * (2 * KS * KS) + 2 * t) * hw + pix, mask=m_ok, other=0.0).to(tl.float32)
            dx = tl.load(off_ptr + (img * (2 * KS * KS) + 2 * t + 1) * hw + pix, mask=m_ok, other=0.0).to(tl.float32)
            mk = tl.load(mask_ptr + (img * (KS * KS) + t) * hw + pix, mask=m_ok, other=0.0).to(tl.float32)
            py = (oy * stride - padding + t // KS).to(tl.float32) + dy
            px = (ox * stride - padding + t % KS).to(tl.float32) + dx
            inside = m_ok & (py > -1.0) & (py < H) & (px > -1.0) & (px < W)
            py = tl.where(inside, py, 0.0)  # keep NaN and far-away samples out of the int casts
            px = tl.where(inside, px, 0.0)
            y0f = tl.floor(py)
            x0f = tl.floor(px)
            ly = py - y0f
            lx = px - x0f
            y0 = y0f.to(tl.int32)
            x0 = x0f.to(tl.int32)
            ok_y0 = inside & (y0 >= 0)
            ok_y1 = inside & (y0 + 1 < H)
            ok_x0 = x0 >= 0
            ok_x1 = x0 + 1 < W
            w00 = (1.0 - ly) * (1.0 - lx) * mk
            w01 = (1.0 - ly) * lx * mk
            w10 = ly * (1.0 - lx) * mk
            w11 = ly * lx * mk
            a00 = x_img + (y0 * W + x0).to(tl.int64) * C
            for c0 in range(0, C, BLOCK_K):
                kc = c0 + rk
                k_ok = kc[None, :] < C
                ptr = x_ptr + a00[:, None] + kc[None, :]
                v = w00[:, None] * tl.load(ptr, mask=(ok_y0 & ok_x0)[:, None] & k_ok, other=0.0).to(tl.float32)
                v += w01[:, None] * tl.load(ptr + C, mask=(ok_y0 & ok_x1)[:, None] & k_ok, other=0.0).to(tl.float32)
                v += w10[:, None] * tl.load(ptr + W * C, mask=(ok_y1 & ok_x0)[:, None] & k_ok, other=0.0).to(tl.float32)
                v += w11[:, None] * tl.load(ptr + (W + 1) * C, mask=(ok_y1 & ok_x1)[:, None] & k_ok,
                                            other=0.0).to(tl.float32)
                wt = tl.load(w_ptr + (t * C + kc)[:, None] * O + rn[None, :],
                             mask=(kc[:, None] < C) & n_ok[None, :], other=0.0)
                if IEEE:
                    acc += tl.dot(v, wt.to(tl.float32), input_precision="ieee")
                elif EMULATE:  # the interpreter cannot multiply bfloat16; round, then multiply exactly
                    acc += tl.dot(v.to(wt.dtype).to(tl.float32), wt.to(tl.float32), input_precision="ieee")
                else:
                    acc += tl.dot(v.to(wt.dtype), wt)
        if HAS_BIAS:
            acc += tl.load(b_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
        out = out_ptr + (img[:, None] * O + rn[None, :]) * hw + pix[:, None]
        tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])

    configs = [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=nw, num_stages=ns)
               for bm, bn, bk, nw, ns in _GPU_CONFIGS]
    # Tuned once per layer shape family (the first call, P3 in DyHead), not per image size.
    tuned = triton.autotune(configs=configs, key=["C", "O", "KS", "IEEE"])(dcn_kernel)
    return dcn_kernel, tuned


def deform_conv2d_triton(x: Tensor, offset: Tensor, mask: Tensor, weight: Tensor, bias: Tensor | None,
                         stride: int = 1, padding: int = 1) -> Tensor:
    """DCNv2 in one fused Triton kernel; same arguments and result as torchvision's op.

    ``x`` (N, C, H, W) float32/float16/bfloat16 on a CUDA device, ``offset`` (N, 2*k*k, h, w)
    and ``mask`` (N, k*k, h, w) already sized for the output, ``weight`` (O, C, k, k),
    optional ``bias`` (O,). Float32 is exact to rounding; half types multiply in ``x``'s type
    with float32 accumulation. Returns (N, O, h, w) in ``x``'s dtype. Forward only.
    """
    if not available(x.device):
        raise ValueError(f"the 'triton' deformable-conv backend needs Triton and a CUDA device, got {x.device}; "
                         "choose another backend (e.g. 'gather' or 'torchvision')")
    import triton

    dtype = x.dtype
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"the 'triton' backend takes float32/float16/bfloat16 input, got {dtype}")
    n, c, height, width = x.shape
    o, _, kernel, _ = weight.shape
    h = (height + 2 * padding - kernel) // stride + 1
    w = (width + 2 * padding - kernel) // stride + 1
    out = torch.empty(n, o, h, w, device=x.device, dtype=dtype)
    if out.numel() == 0:
        return out
    x_cl = x.permute(0, 2, 3, 1).contiguous()
    w_t = weight.to(dtype).permute(2, 3, 1, 0).reshape(kernel * kernel * c, o).contiguous()
    offset = offset.contiguous()
    mask = mask.contiguous()
    b = bias.contiguous() if bias is not None else out  # any pointer; unused without bias
    args = (x_cl, offset, mask, w_t, b, out, n * h * w, c, height, width, h, w, o, stride, padding)
    flags = {"KS": kernel, "HAS_BIAS": bias is not None, "IEEE": dtype == torch.float32, "EMULATE": interpreting()}
    plain, tuned = _kernels()
    if interpreting() or out.numel() <= _SMALL_PROBLEM:
        cfg = _INTERPRET_CONFIG if interpreting() else _SMALL_CONFIG
        grid = (triton.cdiv(n * h * w, cfg["BLOCK_M"]), triton.cdiv(o, cfg["BLOCK_N"]))
        with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
            plain[grid](*args, **flags, **cfg)
    else:
        with torch.cuda.device(x.device):
            tuned[lambda meta: (triton.cdiv(n * h * w, meta["BLOCK_M"]), triton.cdiv(o, meta["BLOCK_N"]))](
                *args, **flags)
    return out
