"""ImageNet backbone weights: caffe2 MSRA ResNet-50 and timm / official Swin-T into our keys, round trips."""
from __future__ import annotations

import io
import os
import pickle
import re
import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hub_testing import loopback, offline_caches  # noqa: F401 (fixtures)

import dyhead_zoo
from dyhead_zoo.weights import imagenet as imagenet_backbones
from dyhead_zoo.weights.checkpoint import UnsafeCheckpointError
from dyhead_zoo.weights.fetch import WeightsDownloadError
from dyhead_zoo.weights.imagenet import ImageNetWeights, bottom_up_of, fetch_imagenet_weights, load_imagenet_backbone


def msra_resnet50_blobs(seed: int = 0) -> dict[str, np.ndarray]:
    """Random arrays under the blob names and shapes of detectron2's ImageNetPretrained/MSRA/R-50.pkl."""
    rng = np.random.default_rng(seed)
    shapes: dict[str, tuple[int, ...]] = {"conv1_w": (64, 3, 7, 7), "res_conv1_bn_s": (64,), "res_conv1_bn_b": (64,),
                                          "fc1000_w": (1000, 2048), "fc1000_b": (1000,), "conv1_w_momentum": (64, 3, 7, 7)}
    in_channels = 64
    for stage, depth in zip(range(2, 6), (3, 4, 6, 3)):
        mid = 64 * 2 ** (stage - 2)
        out = 4 * mid
        for block in range(depth):
            convs = {"branch2a": (mid, in_channels, 1, 1), "branch2b": (mid, mid, 3, 3), "branch2c": (out, mid, 1, 1)}
            if block == 0:
                convs["branch1"] = (out, in_channels, 1, 1)
            for branch, shape in convs.items():
                shapes[f"res{stage}_{block}_{branch}_w"] = shape
                shapes[f"res{stage}_{block}_{branch}_bn_s"] = (shape[0],)
                shapes[f"res{stage}_{block}_{branch}_bn_b"] = (shape[0],)
            in_channels = out
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}


class _Py2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 ``str`` (BINSTRING), as the 2017 caffe2 pickles hold array data."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str


def py2_pickle(obj) -> bytes:
    buffer = io.BytesIO()
    _Py2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def r50_model():
    return dyhead_zoo.create_model("dyhead_r50_atss_fpn_1x")


@pytest.fixture(scope="module")
def swin_model():
    return dyhead_zoo.create_model("dyhead_swint_atss_fpn_2x_ms")


def test_msra_resnet50_pickle_loads_strictly_with_caffe2_semantics(tmp_path, r50_model):
    blobs = msra_resnet50_blobs()
    path = tmp_path / "R-50.pkl"
    path.write_bytes(py2_pickle(blobs))   # the file is a Python 2 era plain pickle of numpy arrays
    fpn_before = {k: v.clone() for k, v in r50_model.backbone.state_dict().items() if "bottom_up" not in k}
    assert load_imagenet_backbone(r50_model, path) == path
    body = bottom_up_of(r50_model)
    expected = {
        body.stem.conv1.weight: "conv1_w", body.stem.conv1.norm.weight: "res_conv1_bn_s",
        body.stem.conv1.norm.bias: "res_conv1_bn_b", body.res2[0].shortcut.weight: "res2_0_branch1_w",
        body.res3[0].conv1.weight: "res3_0_branch2a_w", body.res4[5].conv2.norm.weight: "res4_5_branch2b_bn_s",
        body.res5[2].conv3.norm.bias: "res5_2_branch2c_bn_b", body.res5[0].shortcut.norm.bias: "res5_0_branch1_bn_b",
    }
    for tensor, blob in expected.items():
        torch.testing.assert_close(tensor, torch.from_numpy(blobs[blob]), rtol=0, atol=0)
    loaded = sum(1 for name in body.state_dict() if not name.endswith(("running_mean", "running_var")))
    assert loaded == len(blobs) - 3   # everything but the classifier and the solver momentum
    # caffe2 AffineChannel: y = conv(x) * scale + shift, what detectron2's FrozenBN computes here
    x = torch.randn(1, 3, 32, 32)
    conv = F.conv2d(x, torch.from_numpy(blobs["conv1_w"]), stride=2, padding=3)
    affine = conv * torch.from_numpy(blobs["res_conv1_bn_s"]).view(1, -1, 1, 1) + torch.from_numpy(
        blobs["res_conv1_bn_b"]).view(1, -1, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(body.stem.conv1(x), affine, rtol=1e-5, atol=1e-4)
    for name, value in r50_model.backbone.state_dict().items():
        if "bottom_up" not in name:
            assert torch.equal(value, fpn_before[name]), name


def test_msra_pickle_with_code_is_refused_and_wrong_files_are_named(tmp_path, r50_model):
    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    evil = tmp_path / "R-50.pkl"
    evil.write_bytes(pickle.dumps({"conv1_w": Payload()}, protocol=2))
    with pytest.raises(UnsafeCheckpointError, match="other than tensors and numpy arrays"):
        load_imagenet_backbone(r50_model, evil)
    partial = tmp_path / "partial.pkl"
    blobs = msra_resnet50_blobs()
    del blobs["res4_2_branch2b_w"]
    partial.write_bytes(py2_pickle(blobs))
    with pytest.raises(ValueError, match=r"not the detectron2's MSRA ResNet-50 .*missing keys \(1\): res4.2.conv2.weight$"):
        load_imagenet_backbone(r50_model, partial)


def _random_timm_swin():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False).eval()
    with torch.no_grad():   # LayerNorms start at 1/0 and biases at 0: perturb all so every tensor is checked
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)
    return model


def _official_layout(timm_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm >= 0.9 names -> the Swin release's names (downsample at the end of a stage, buffers, head)."""
    out = {}
    for name, value in timm_state.items():
        found = re.match(r"layers\.(\d+)\.downsample\.(.*)", name)
        name = f"layers.{int(found.group(1)) - 1}.downsample.{found.group(2)}" if found else name
        out[name.replace("head.fc.", "head.")] = value
        if name.endswith("attn.relative_position_bias_table"):
            out[name.replace("bias_table", "index")] = torch.zeros(49, 49, dtype=torch.int64)
    out["layers.0.blocks.1.attn_mask"] = torch.zeros(64, 49, 49)
    return out


def test_timm_and_official_swin_tiny_give_the_same_stage_outputs(tmp_path, swin_model):
    from safetensors.torch import save_file

    timm_model = _random_timm_swin()
    timm_state = timm_model.state_dict()
    save_file({k: v.contiguous() for k, v in timm_state.items()}, str(tmp_path / "model.safetensors"))
    load_imagenet_backbone(swin_model, tmp_path / "model.safetensors")
    body = bottom_up_of(swin_model)
    from_timm = {k: v.clone() for k, v in body.state_dict().items()}
    torch.testing.assert_close(body.layers[2].downsample.reduction.weight,
                               timm_state["layers.3.downsample.reduction.weight"], rtol=0, atol=0)
    for i in (1, 2, 3):   # output norms are not in an ImageNet file: LayerNorm's identity
        assert torch.equal(getattr(body, f"norm{i}").weight, torch.ones(192 * 2 ** (i - 1)))

    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        ours = body.patch_embed(x)
        h, w = ours.shape[-2:]
        ours = ours.flatten(2).transpose(1, 2)
        theirs = timm_model.patch_embed(x)
        # stages 0-2 run at 56, 28, 14 tokens, where both implementations shift windows the same way
        for index in range(3):
            stage_out, ours, h, w = body.layers[index](ours, h, w)
            theirs = timm_model.layers[index](theirs)
            torch.testing.assert_close(stage_out, theirs.flatten(1, 2), rtol=1e-4, atol=1e-4)

    torch.save({"model": _official_layout(timm_state)}, tmp_path / "swin_tiny_patch4_window7_224.pth")
    for parameter in body.parameters():
        parameter.data.zero_()
    load_imagenet_backbone(swin_model, tmp_path / "swin_tiny_patch4_window7_224.pth")
    for name, value in body.state_dict().items():
        assert torch.equal(value, from_timm[name]), name


def test_missing_file_is_fetched_once_through_the_weights_code(tmp_path, monkeypatch, r50_model):
    served = tmp_path / "server" / "R-50.pkl"
    served.parent.mkdir()
    served.write_bytes(py2_pickle(msra_resnet50_blobs(1)))
    monkeypatch.setitem(imagenet_backbones.IMAGENET_WEIGHTS, "resnet50", imagenet_backbones.ImageNetWeights(
        "resnet50", "detectron2's MSRA ResNet-50", served.as_uri()))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    path = load_imagenet_backbone(r50_model, None, progress=False)
    assert path == tmp_path / "hub" / "checkpoints" / "R-50.pkl" and path.read_bytes() == served.read_bytes()
    served.unlink()   # a second call uses the cached copy
    assert load_imagenet_backbone(r50_model, None, progress=False) == path
    torch.testing.assert_close(bottom_up_of(r50_model).stem.conv1.weight,
                               torch.from_numpy(msra_resnet50_blobs(1)["conv1_w"]), rtol=0, atol=0)


def test_converter_command_writes_our_keys_that_load_back(tmp_path, r50_model):
    from dyhead_zoo.converters import imagenet_backbones as command

    source = tmp_path / "R-50.pkl"
    source.write_bytes(py2_pickle(msra_resnet50_blobs(2)))
    out = tmp_path / "r50_imagenet.safetensors"
    assert command.main(["resnet50", "--input", str(source), "--out", str(out), "--no-progress"]) == 0
    load_imagenet_backbone(r50_model, out)   # already in our keys: passes through, loads strictly
    torch.testing.assert_close(bottom_up_of(r50_model).res5[2].conv3.weight,
                               torch.from_numpy(msra_resnet50_blobs(2)["res5_2_branch2c_w"]), rtol=0, atol=0)
    assert command.main(["resnet50", "--input", str(tmp_path / "absent.pkl"), "--out", str(out)]) == 1


def test_imagenet_weights_come_from_the_url_into_the_torch_hub_cache(offline_caches, loopback, monkeypatch):
    loopback.files["R-50.pkl"] = b"imagenet weights"
    source = ImageNetWeights("resnet50", "a test file", loopback.url("ok", "R-50.pkl"),
                             hf_repo="nobody/missing", hf_filename="model.safetensors")
    monkeypatch.setitem(imagenet_backbones.IMAGENET_WEIGHTS, "resnet50", source)
    path = fetch_imagenet_weights("resnet50", progress=False)  # the Hub is offline: the URL is next
    assert path == offline_caches.checkpoints / "R-50.pkl" and path.read_bytes() == b"imagenet weights"
    loopback.files.clear()
    assert fetch_imagenet_weights("resnet50", progress=False) == path  # cached: no request


def test_imagenet_weights_without_network_fail_at_once_naming_the_file_to_save(offline_caches, monkeypatch):
    import socket
    import time

    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    from huggingface_hub import constants

    # Network "on" but nothing answers: the Hub endpoint and the URL both point at the closed port.
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    source = ImageNetWeights("swin_t", "a test file", f"http://127.0.0.1:{port}/swin.pth",
                             hf_repo="timm/missing", hf_filename="model.safetensors")
    monkeypatch.setitem(imagenet_backbones.IMAGENET_WEIGHTS, "swin_t", source)
    start = time.perf_counter()
    with pytest.raises(WeightsDownloadError, match="no network") as err:
        fetch_imagenet_weights("swin_t", progress=False)
    assert time.perf_counter() - start < 5  # no retries against an unreachable host
    assert str(offline_caches.checkpoints / "swin.pth") in str(err.value)
