"""The deformable-conv backends agree with torchvision, and the automatic choice behaves."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torchvision.ops import deform_conv2d

from dyhead_zoo.ops import deform_conv as dc
from dyhead_zoo.ops.dcn_gather import deform_conv2d_gather

CPU_BACKENDS = dc.available_backends("cpu")
CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
FP32_TOL = 1e-5  # of the output's largest magnitude; float32 rounding is ~1e-7 at these sizes
HALF_TOL = {torch.float16: 5e-3, torch.bfloat16: 2e-2}  # stated tolerance for half inputs


def random_case(n, c, o, height, width, stride, padding, kernel=3, spread=3.0, seed=0, dtype=torch.float64):
    """Inputs of one DCN call; ``spread`` scales offsets (3 pushes many samples off the image)."""
    gen = torch.Generator().manual_seed(seed)
    h, w = dc.output_size(height, width, kernel, stride, padding)
    case = {
        "x": torch.randn(n, c, height, width, generator=gen, dtype=dtype),
        "offset": spread * torch.randn(n, 2 * kernel * kernel, h, w, generator=gen, dtype=dtype),
        "mask": torch.rand(n, kernel * kernel, h, w, generator=gen, dtype=dtype),
        "weight": torch.randn(o, c, kernel, kernel, generator=gen, dtype=dtype),
        "bias": torch.randn(o, generator=gen, dtype=dtype),
    }
    return case, stride, padding


def reference(case, stride, padding):
    """torchvision's result in float64 on CPU."""
    c = {k: v.double().cpu() for k, v in case.items()}
    return deform_conv2d(c["x"], c["offset"], c["weight"], c["bias"], stride=stride, padding=padding, mask=c["mask"])


def run(backend, case, stride, padding, dtype=torch.float32, device="cpu"):
    c = {k: v.to(device=device, dtype=dtype) for k, v in case.items()}
    return dc.BACKENDS[backend](c["x"], c["offset"], c["mask"], c["weight"], c["bias"], stride, padding)


def rel_error(out, ref):
    return ((out.double().cpu() - ref).abs().max() / ref.abs().max()).item()


SHAPES = [  # n, c, o, H, W, stride, padding, kernel
    (1, 8, 5, 7, 9, 1, 1, 3),
    (2, 20, 18, 10, 6, 2, 1, 3),
    (3, 5, 4, 9, 11, 1, 0, 3),
    (1, 3, 2, 8, 8, 2, 2, 3),
    (2, 4, 3, 6, 7, 1, 0, 1),
    (1, 4, 3, 9, 9, 1, 2, 5),
    (4, 16, 16, 5, 3, 2, 1, 3),
]


def test_hand_checked_sample():
    # 3x3 image 0..8, only the centre tap weighted, centre offset (dy, dx) = (0.5, 0.25), mask 0.5:
    # the output at the centre is 0.5 * bilinear(1.5, 1.25) = 0.5 * (4 + 0.5*3 + 0.25*1) = 2.875.
    x = torch.arange(9.0).view(1, 1, 3, 3)
    weight = torch.zeros(1, 1, 3, 3)
    weight[0, 0, 1, 1] = 1
    offset = torch.zeros(1, 18, 3, 3)
    offset[0, 8, 1, 1], offset[0, 9, 1, 1] = 0.5, 0.25
    mask = torch.full((1, 9, 3, 3), 0.5)
    for backend in CPU_BACKENDS:
        out = dc.modulated_deform_conv2d(x, offset, mask, weight, None, backend=backend)
        assert out[0, 0, 1, 1].item() == pytest.approx(2.875, abs=1e-6), backend
        # elsewhere the centre tap reads the pixel itself, halved by the mask
        assert out[0, 0, 0, 0].item() == pytest.approx(0.0) and out[0, 0, 2, 2].item() == pytest.approx(4.0)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_float32_matches_torchvision(backend, shape):
    n, c, o, height, width, stride, padding, kernel = shape
    case, stride, padding = random_case(n, c, o, height, width, stride, padding, kernel, seed=sum(shape))
    out = run(backend, case, stride, padding)
    assert out.dtype == torch.float32 and out.is_contiguous()
    assert rel_error(out, reference(case, stride, padding)) < FP32_TOL


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_offset_larger_than_output_reads_like_the_official_kernel(backend):
    # DyConv[0]: the conv runs on the coarser level with the finer level's offset and mask;
    # per sample the kernel reads the leading 18*h*w / 9*h*w values of their memory.
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 6, 5, 7, generator=gen)
    offset = 2 * torch.randn(2, 27, 10, 14, generator=gen)[:, :18]
    mask = torch.rand(2, 27, 10, 14, generator=gen)[:, 18:]
    weight, bias = torch.randn(4, 6, 3, 3, generator=gen), torch.randn(4, generator=gen)
    out = dc.modulated_deform_conv2d(x, offset, mask, weight, bias, 1, 1, backend=backend)
    flat_off = offset.contiguous().view(2, -1)[:, : 18 * 35].reshape(2, 18, 5, 7)
    flat_mask = mask.contiguous().view(2, -1)[:, : 9 * 35].reshape(2, 9, 5, 7)
    ref = deform_conv2d(x.double(), flat_off.double(), weight.double(), bias.double(), padding=1,
                        mask=flat_mask.double())
    assert rel_error(out, ref) < FP32_TOL


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_dyhead_shape_and_samples_far_outside(backend):
    case, stride, padding = random_case(2, 256, 256, 7, 11, 1, 1, spread=1.0, seed=3)
    case["offset"][:, ::5] += 40.0  # some taps far off the image: they must read zero
    assert rel_error(run(backend, case, stride, padding), reference(case, stride, padding)) < FP32_TOL


def test_gather_reads_zero_for_nan_offsets():
    # torchvision's kernel casts NaN to int (undefined; it can crash); gather treats it as outside.
    case, stride, padding = random_case(1, 4, 3, 5, 6, 1, 1, seed=9)
    case["offset"][0, 4, 2, 3] = float("nan")
    out = run("gather", case, stride, padding)
    case["offset"][0, 4, 2, 3] = 1e6
    assert rel_error(out, reference(case, stride, padding)) < FP32_TOL


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_return_their_dtype(backend, dtype):
    case, stride, padding = random_case(2, 12, 7, 9, 8, 2, 1, seed=4)
    case = {k: v.to(dtype) for k, v in case.items()}  # the reference sees the same rounded inputs
    out = run(backend, case, stride, padding, dtype=dtype)
    assert out.dtype == dtype
    assert rel_error(out, reference(case, stride, padding)) < HALF_TOL[dtype]


def test_gather_under_cpu_autocast_keeps_the_input_dtype():
    case, stride, padding = random_case(1, 8, 8, 6, 6, 1, 1, seed=5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = run("gather", case, stride, padding)
    assert out.dtype == torch.float32
    assert rel_error(out, reference(case, stride, padding)) < FP32_TOL


@pytest.mark.parametrize("chunk_bytes", [1, 3000, 1 << 30])
def test_gather_chunking_does_not_change_results(chunk_bytes):
    # 1 byte: one output row per chunk; 3000: several rows of one image; 1 GiB: all images at once.
    case, stride, padding = random_case(3, 4, 5, 9, 10, 1, 1, seed=6)
    c = {k: v.float() for k, v in case.items()}
    out = deform_conv2d_gather(c["x"], c["offset"], c["mask"], c["weight"], c["bias"], stride, padding,
                               chunk_bytes=chunk_bytes)
    assert rel_error(out, reference(case, stride, padding)) < FP32_TOL


def test_gather_gradients_match_torchvision():
    case, stride, padding = random_case(2, 3, 4, 6, 5, 1, 1, seed=7)
    grads = []
    for backend in ("torchvision", "gather"):
        inputs = {k: v.clone().requires_grad_() for k, v in case.items()}
        out = dc.BACKENDS[backend](inputs["x"], inputs["offset"], inputs["mask"], inputs["weight"], inputs["bias"],
                                   stride, padding)
        out.square().sum().backward()
        grads.append({k: v.grad for k, v in inputs.items()})
    for key in case:
        torch.testing.assert_close(grads[1][key], grads[0][key], rtol=1e-9, atol=1e-9, msg=key)


def test_default_is_the_fastest_checked_backend_and_can_be_forced(monkeypatch):
    monkeypatch.delenv(dc.ENV_VAR, raising=False)
    assert dc.resolve_backend() == "gather" == dc.auto_backend("cpu")
    assert dc.resolve_backend("auto", "cpu") == "gather"
    assert dc.resolve_backend("torchvision") == "torchvision"
    monkeypatch.setenv(dc.ENV_VAR, "torchvision")
    assert dc.resolve_backend() == "torchvision"
    assert dc.resolve_backend("gather") == "gather"  # the argument wins over the environment
    monkeypatch.setenv(dc.ENV_VAR, "nope")
    with pytest.raises(ValueError, match="unknown deformable-conv backend 'nope'"):
        dc.resolve_backend()


@pytest.mark.skipif(CUDA, reason="checks the CPU-only machine")
def test_triton_is_refused_on_cpu_and_auto_falls_back(monkeypatch):
    monkeypatch.delenv(dc.ENV_VAR, raising=False)
    assert "triton" not in dc.available_backends("cpu")
    with pytest.raises(ValueError, match="cannot run on cpu"):
        dc.resolve_backend("triton", "cpu")
    assert not dc.self_check("triton", "cpu")
    x = torch.zeros(1, 2, 4, 4)
    with pytest.raises(ValueError, match="cannot run on cpu"):
        dc.modulated_deform_conv2d(x, torch.zeros(1, 18, 4, 4), torch.ones(1, 9, 4, 4), torch.zeros(2, 2, 3, 3), None,
                                   backend="triton")


def test_a_backend_failing_its_self_check_is_skipped(monkeypatch):
    def wrong(x, offset, mask, weight, bias, stride, padding):
        return dc.BACKENDS["torchvision"](x, offset, mask, weight, bias, stride, padding) * 1.001

    monkeypatch.setitem(dc.BACKENDS, "gather", wrong)
    monkeypatch.setattr(dc, "_auto_cache", {})
    monkeypatch.setattr(dc, "_check_cache", {})
    with pytest.warns(UserWarning, match="disagrees with torchvision"):
        assert dc.auto_backend("cpu") == "torchvision"

    def broken(*args):
        raise RuntimeError("no kernel")

    monkeypatch.setitem(dc.BACKENDS, "gather", broken)
    monkeypatch.setattr(dc, "_check_cache", {})
    with pytest.warns(UserWarning, match="failed its self-check"):
        assert not dc.self_check("gather")


def test_info_names_versions_device_and_backend(monkeypatch):
    monkeypatch.delenv(dc.ENV_VAR, raising=False)
    from dyhead_zoo.cli.info import describe

    text = describe()
    assert torch.__version__ in text and "torchvision" in text and "timm" in text and "dyhead_zoo" in text
    assert "dcn backend gather" in text and "torchvision ok" in text


TRITON_SCRIPT = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, {tests!r})
    from test_deform_conv import random_case, reference, rel_error, HALF_TOL
    from dyhead_zoo.ops import deform_conv as dc
    from dyhead_zoo.ops.dcn_triton import deform_conv2d_triton
    assert dc.available_backends("cpu") == ["torchvision", "gather", "triton"]
    assert dc.self_check("triton", "cpu")  # float32, stride 1 and 2, bias, samples off the image
    case, stride, padding = random_case(1, 20, 18, 6, 7, 1, 0, seed=1)
    for dtype in (torch.float16, torch.bfloat16):
        h = {{k: v.to(dtype) for k, v in case.items()}}
        out = deform_conv2d_triton(h["x"], h["offset"], h["mask"], h["weight"], None, stride, padding)
        h["bias"] = torch.zeros_like(h["bias"])
        assert out.dtype == dtype and rel_error(out, reference(h, stride, padding)) < HALF_TOL[dtype], dtype
    print("triton-interpreter-ok")
""")


def test_triton_kernel_in_the_cpu_interpreter():
    """The Triton kernel's arithmetic, run by Triton's CPU interpreter (no GPU needed)."""
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    env.pop(dc.ENV_VAR, None)
    script = TRITON_SCRIPT.format(tests=str(Path(__file__).parent))
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "triton-interpreter-ok" in proc.stdout, proc.stderr[-3000:]


# --- GPU: skipped without CUDA ---------------------------------------------------------------

@needs_cuda
@pytest.mark.parametrize("backend", ["triton", "gather", "torchvision"])
@pytest.mark.parametrize("shape", SHAPES[:4] + [(2, 256, 256, 25, 38, 1, 1, 3), (2, 256, 256, 50, 76, 2, 1, 3)],
                         ids=lambda s: "x".join(map(str, s)))
def test_cuda_float32_matches_torchvision(backend, shape):
    if backend not in dc.available_backends("cuda"):
        pytest.skip(f"{backend} unavailable on CUDA")
    case, stride, padding = random_case(*shape, seed=sum(shape))
    out = run(backend, case, stride, padding, device="cuda")
    assert out.device.type == "cuda"
    assert rel_error(out, reference(case, stride, padding)) < FP32_TOL
    tv = run("torchvision", case, stride, padding, device="cuda")  # torchvision's CUDA op, same inputs
    assert rel_error(out, tv.double().cpu()) < FP32_TOL


@needs_cuda
@pytest.mark.parametrize("backend", ["triton", "gather"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_half_within_stated_tolerance(backend, dtype):
    if backend not in dc.available_backends("cuda"):
        pytest.skip(f"{backend} unavailable on CUDA")
    case, stride, padding = random_case(2, 256, 256, 25, 38, 1, 1, spread=1.0, seed=8)
    case = {k: v.to(dtype) for k, v in case.items()}
    out = run(backend, case, stride, padding, dtype=dtype, device="cuda")
    assert out.dtype == dtype
    assert rel_error(out, reference(case, stride, padding)) < HALF_TOL[dtype]


@needs_cuda
def test_cuda_auto_choice_passes_its_self_check(monkeypatch):
    monkeypatch.delenv(dc.ENV_VAR, raising=False)
    chosen = dc.resolve_backend(None, "cuda")
    assert chosen in dc.available_backends("cuda") and dc.self_check(chosen, "cuda")
