"""The fused CPU inference path (folded FrozenBatchNorm, channels-last, fused conv post-ops,
candidates from logits) gives the plain path's results and leaves training and state_dict alone."""
from __future__ import annotations

import math

import pytest
import torch

from dyhead_zoo.models import fused_conv
from dyhead_zoo.models.candidates import sigmoid_candidates
from dyhead_zoo.models.fpn import FPN
from dyhead_zoo.models.resnet import ConvNorm, ResNet50


def _resnet(seed: int = 0) -> ResNet50:
    """A ResNet-50 with non-trivial FrozenBatchNorm statistics, so folding has work to do."""
    gen = torch.Generator().manual_seed(seed)
    model = ResNet50(("res3", "res4", "res5"))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, ConvNorm):
                norm = module.norm
                norm.weight.copy_(0.5 + torch.rand(norm.weight.shape, generator=gen))
                norm.bias.copy_(0.1 * torch.randn(norm.bias.shape, generator=gen))
                norm.running_mean.copy_(0.1 * torch.randn(norm.running_mean.shape, generator=gen))
                norm.running_var.copy_(0.5 + torch.rand(norm.running_var.shape, generator=gen))
                module.weight.normal_(std=math.sqrt(1.0 / module.weight[0].numel()), generator=gen)
    return model


@pytest.fixture(autouse=True)
def fused_path_on(monkeypatch):
    """The fused path (the default; set explicitly here), compared with the plain one."""
    monkeypatch.setenv(fused_conv.ENV_VAR, "1")


def _plain(model: torch.nn.Module, x: torch.Tensor, monkeypatch) -> dict[str, torch.Tensor]:
    with monkeypatch.context() as patch, torch.no_grad():
        patch.setenv(fused_conv.ENV_VAR, "0")
        return model(x)


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool((a - b).abs().max() <= 1e-4 * b.abs().max())


@pytest.fixture(scope="module")
def resnet() -> ResNet50:
    return _resnet().eval()


def test_fused_resnet_matches_plain_path_and_keeps_state_dict(resnet, monkeypatch):
    x = torch.randn(1, 3, 64, 96)
    keys = list(resnet.state_dict())
    reference = _plain(resnet, x, monkeypatch)
    with torch.no_grad():
        fused = resnet(x)
    assert fused["res3"].is_contiguous(memory_format=torch.channels_last)
    for name in reference:
        assert _close(fused[name], reference[name]), name
    assert list(resnet.state_dict()) == keys
    # A BatchNorm statistic changed in place reaches the folded weights at the next forward.
    norm = resnet.res3[0].conv1.norm
    with torch.no_grad():
        norm.running_mean.add_(1.0)
        changed = resnet(x)["res3"]
    try:
        assert not _close(changed, fused["res3"])
        assert _close(changed, _plain(resnet, x, monkeypatch)["res3"])
    finally:
        with torch.no_grad():
            norm.running_mean.sub_(1.0)


def test_fold_cache_follows_load_state_dict_and_training(monkeypatch):
    model = _resnet(seed=1).eval()
    other = _resnet(seed=2).state_dict()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = model(x)["res5"]
    model.load_state_dict(other)
    with torch.no_grad():
        after = model(x)["res5"]
    assert _close(after, _plain(model, x, monkeypatch)["res5"])
    assert not _close(after, before)
    # Training: the plain path with gradients to the conv weights; an optimizer step then
    # invalidates the folded weights used by the next eval forward.
    model.train()
    model.res5[0].conv1.weight.requires_grad_(True)
    model(x)["res5"].square().mean().backward()
    assert model.res5[0].conv1.weight.grad is not None
    with torch.no_grad():
        model.res5[0].conv1.weight.sub_(model.res5[0].conv1.weight.grad * 1e3)
    model.eval()
    with torch.no_grad():
        stepped = model(x)["res5"]
    assert _close(stepped, _plain(model, x, monkeypatch)["res5"])
    assert not _close(stepped, after)


def test_fused_fpn_matches_plain_path(resnet, monkeypatch):
    fpn = FPN(resnet, ("res3", "res4", "res5"), 32, "p6p7").eval()
    x = torch.randn(1, 3, 64, 96)
    reference = _plain(fpn, x, monkeypatch)
    with torch.no_grad():
        fused = fpn(x)
    assert list(fused) == ["p3", "p4", "p5", "p6", "p7"]
    for name in reference:
        assert _close(fused[name], reference[name]), name


def test_conv2d_bias_act_matches_eager_ops():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 9, 11, generator=gen).contiguous(memory_format=torch.channels_last)
    weight, bias = torch.randn(16, 8, 3, 3, generator=gen), torch.randn(16, generator=gen)
    residual = torch.randn(2, 16, 9, 11, generator=gen)
    conv = torch.nn.functional.conv2d(x, weight, bias, 1, 1)
    with torch.no_grad():
        assert _close(fused_conv.conv2d_bias_act(x, weight, bias, 1, 1, relu=True, residual=residual),
                      torch.relu(conv + residual))
        assert _close(fused_conv.conv2d_bias_act(x, weight, bias, 1, 1), conv)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # falls back to the eager ops under autocast
            out = fused_conv.conv2d_bias_act(x, weight, bias, 1, 1, relu=True)
        assert out.dtype == torch.bfloat16
    assert (out.float() - torch.relu(conv)).abs().max() <= 0.05 * conv.abs().max()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sigmoid_candidates_equal_thresholding_the_full_sigmoid(dtype):
    gen = torch.Generator().manual_seed(0)
    thresh = 0.05
    bound = math.log(thresh / (1 - thresh))
    logits = 3 * torch.randn(500, 7, generator=gen)
    # Values around the threshold's logit, where rounding could flip a naive logit comparison.
    logits[:100] = bound + 1e-6 * torch.randn(100, 7, generator=gen)
    logits = logits.to(dtype)
    probs = logits.float().sigmoid()
    expected = (probs > thresh).flatten().nonzero().squeeze(1)
    indices, scores = sigmoid_candidates(logits, thresh)
    assert torch.equal(indices, expected)
    assert torch.equal(scores, probs.flatten()[expected])
    # Every entry passing, and a threshold with no finite logit.
    indices, scores = sigmoid_candidates(torch.full((3, 2), 4.0), thresh)
    assert indices.tolist() == list(range(6))
    indices, _ = sigmoid_candidates(logits, 0.0)
    assert torch.equal(indices, (probs > 0).flatten().nonzero().squeeze(1))
