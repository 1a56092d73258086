"""The deformable conv trains: gradients of every differentiable backend, and the backend choice."""
from __future__ import annotations

import pytest
import torch
from torchvision.ops import deform_conv2d

from dyhead_zoo.ops import deform_conv as dc

TRAINING_BACKENDS = [name for name in dc.available_backends("cpu") if dc.is_differentiable(name)]


def _inputs(n, c, o, height, width, stride, out_hw=None, dtype=torch.float64, seed=0, spread=1.5):
    """x, offset, mask, weight, bias as leaf tensors that require grad. ``out_hw`` sizes the
    offset/mask maps (default: the conv output's size; larger for the official over-read)."""
    gen = torch.Generator().manual_seed(seed)
    h, w = out_hw or dc.output_size(height, width, 3, stride, 1)
    tensors = [
        torch.randn(n, c, height, width, generator=gen, dtype=dtype),
        spread * torch.randn(n, 18, h, w, generator=gen, dtype=dtype) + 0.3,  # off the integer grid
        torch.rand(n, 9, h, w, generator=gen, dtype=dtype),
        torch.randn(o, c, 3, 3, generator=gen, dtype=dtype) / (3 * c**0.5),
        torch.randn(o, generator=gen, dtype=dtype),
    ]
    return [t.requires_grad_() for t in tensors]


@pytest.mark.parametrize("backend", TRAINING_BACKENDS)
@pytest.mark.parametrize("stride,out_hw", [(1, None), (2, None), (1, (5, 6))], ids=["s1", "s2", "larger-offset"])
def test_gradcheck_float64(backend, stride, out_hw):
    """Analytic gradients (input, offset, mask, weight, bias) equal finite differences in float64
    (gradcheck's fast mode: random projections of the full Jacobian, every input at once)."""
    args = _inputs(2, 2, 2, 4, 5, stride, out_hw)

    def conv(x, offset, mask, weight, bias):
        return dc.modulated_deform_conv2d(x, offset, mask, weight, bias, stride, 1, backend=backend)

    assert torch.autograd.gradcheck(conv, args, eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)


@pytest.mark.parametrize("backend", TRAINING_BACKENDS)
def test_larger_offset_gradient_lands_in_the_leading_memory(backend):
    """Offset/mask maps of a finer level: the gradient fills each sample's leading 18*h*w / 9*h*w
    values (what the official kernel reads, as [C, h, w]) and is zero elsewhere."""
    x, offset, mask, weight, bias = _inputs(2, 4, 3, 4, 5, 1, out_hw=(8, 10), dtype=torch.float32)
    dc.modulated_deform_conv2d(x, offset, mask, weight, bias, 1, 1, backend=backend).square().sum().backward()
    h, w = 4, 5
    lead_offset = offset.detach().reshape(2, -1)[:, : 18 * h * w].reshape(2, 18, h, w).requires_grad_()
    lead_mask = mask.detach().reshape(2, -1)[:, : 9 * h * w].reshape(2, 9, h, w).requires_grad_()
    deform_conv2d(x.detach(), lead_offset, weight.detach(), bias.detach(), padding=1,
                  mask=lead_mask).square().sum().backward()
    for grad, lead in ((offset.grad, lead_offset), (mask.grad, lead_mask)):
        flat = grad.reshape(2, -1)
        size = lead[0].numel()
        assert flat[:, size:].abs().max() == 0
        torch.testing.assert_close(flat[:, :size].reshape(lead.shape), lead.grad,
                                   rtol=1e-4, atol=1e-5 * float(lead.grad.abs().max()))


@pytest.mark.parametrize("stride", [1, 2])
def test_gather_gradients_match_torchvision_float32_dyhead_sized(stride):
    """The fast backend's float32 gradients agree with torchvision's on a DyHead-sized conv
    (256 channels, a P5-sized map, offsets of a few pixels)."""
    args = _inputs(2, 256, 256, 20, 32, stride, dtype=torch.float32, spread=2.0)
    grads = {}
    gen = torch.Generator().manual_seed(1)
    out_shape = (2, 256) + dc.output_size(20, 32, 3, stride, 1)
    upstream = torch.randn(out_shape, generator=gen)
    for backend in ("torchvision", "gather"):
        for t in args:
            t.grad = None
        out = dc.modulated_deform_conv2d(*args, stride, 1, backend=backend)
        out.backward(upstream)
        grads[backend] = [t.grad.clone() for t in args]
    for name, ours, ref in zip(("x", "offset", "mask", "weight", "bias"), grads["gather"], grads["torchvision"]):
        scale = float(ref.abs().max())
        err = float((ours - ref).abs().max())
        assert err <= 2e-5 * scale, f"{name}: max error {err:.3e} vs largest gradient {scale:.3e}"


def test_forward_only_backend_is_replaced_when_training(monkeypatch):
    """With gradients recorded, the automatic choice never takes a forward-only backend: a
    forward-only fastest choice is swapped for the training backend, which info reports."""
    monkeypatch.delenv(dc.ENV_VAR, raising=False)
    monkeypatch.setitem(dc._auto_cache, ("cpu", False), "triton")  # pretend triton won on this device
    calls = []
    monkeypatch.setitem(dc.BACKENDS, "triton", lambda *a: calls.append("triton") or dc._gather_backend(*a))
    x, offset, mask, weight, bias = _inputs(1, 2, 2, 4, 4, 1, dtype=torch.float32)
    with torch.no_grad():
        dc.modulated_deform_conv2d(x, offset, mask, weight, bias)
    assert calls == ["triton"]
    out = dc.modulated_deform_conv2d(x, offset, mask, weight, bias)
    assert calls == ["triton"] and out.requires_grad
    assert dc.training_backend("cpu") in TRAINING_BACKENDS


def test_forward_only_backend_named_for_training_raises(monkeypatch):
    monkeypatch.setenv(dc.ENV_VAR, "triton")
    monkeypatch.setitem(dc._RUNS_ON, "triton", lambda device: True)
    x, offset, mask, weight, bias = _inputs(1, 2, 2, 4, 4, 1, dtype=torch.float32)
    with pytest.raises(ValueError, match="forward-only"):
        dc.modulated_deform_conv2d(x, offset, mask, weight, bias)
    with pytest.raises(ValueError, match="forward-only"):
        dc.training_backend("cpu")


def test_info_names_the_training_backend():
    from dyhead_zoo.cli.info import describe

    text = describe()
    assert f"dcn training backend {dc.training_backend('cpu')}" in text
