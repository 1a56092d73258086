"""Weight sources in the zoo, and fetching them: loopback HTTP for the official .pth, a local
Hugging Face cache (HF_HUB_OFFLINE=1) for the converted repo. No test touches the network."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from conftest import manifest, official_state_dict
from hub_testing import (  # noqa: F401
    REPO_ROOT,
    assert_bit_identical,
    converted_folder,
    loopback,
    make_hf_cache,
    official_pth,
    offline_caches,
)

import dyhead_zoo
from dyhead_zoo.categories import COCO_CLASS_NAMES
from dyhead_zoo.config import WeightSource
from dyhead_zoo.registry import weight_sources
from dyhead_zoo.weights.fetch import WeightsDownloadError, download_url, download_weights, pth_cache_path

NAME = "dyhead_r50_atss_fpn_1x"


def with_sources(name: str, url: str, hf_repo: str | None = None, sha256: str = "") -> dyhead_zoo.ModelConfig:
    """``name``'s config with two sources: the project repo (``hf_repo``; default the real one),
    then the official file at ``url``; no mirror."""
    config = dyhead_zoo.get_config(name)
    project = WeightSource("project", repo=config.weights.hf_repo if hf_repo is None else hf_repo,
                           filename="model.safetensors")
    weights = dataclasses.replace(config.weights, sources=(project, WeightSource("official", url=url, sha256=sha256)))
    return dataclasses.replace(config, weights=weights)


@pytest.mark.parametrize("name", dyhead_zoo.list_models())
def test_zoo_records_weight_sources(name, offline_caches):
    sources = weight_sources(name)
    assert sources["url"] == f"https://xiyang.blob.core.windows.net/public/{name}.pth"
    assert sources["hf_repo"] == dyhead_zoo.get_config(name).weights.hf_repo
    assert sources["hf_repo"].split("/")[1] == name
    assert sources["num_params"] == sum(
        torch.Size(k["shape"]).numel() for k in manifest(name) if k["kind"] == "param")
    assert sources["coco_map"] == dyhead_zoo.get_config(name).published_map > 0
    assert sources["categories"] == list(COCO_CLASS_NAMES) and len(sources["categories"]) == 80
    assert sources["pth_cache_path"] == str(offline_caches.checkpoints / f"{name}.pth")


def test_download_is_atomic_with_progress(loopback, tmp_path, capsys):
    data = os.urandom(3 << 20)
    loopback.files["w.pth"] = data
    target = tmp_path / "checkpoints" / "w.pth"
    assert download_url(loopback.url("ok", "w.pth"), target, hashlib.sha256(data).hexdigest()) == target
    assert target.read_bytes() == data
    assert os.listdir(target.parent) == ["w.pth"]
    assert "w.pth" in capsys.readouterr().err  # the tqdm bar


@pytest.mark.parametrize("mode,reason", [("truncated", "cut short"), ("error", "500")])
def test_failed_download_keeps_nothing_and_names_the_fix(loopback, tmp_path, mode, reason):
    loopback.files["w.pth"] = os.urandom(1 << 20)
    url, target = loopback.url(mode, "w.pth"), tmp_path / "checkpoints" / "w.pth"
    with pytest.raises(WeightsDownloadError) as info:
        download_url(url, target, progress=False)
    message = str(info.value)
    for part in (url, str(target), "weights=PATH", reason):
        assert part in message
    assert os.listdir(target.parent) == []  # neither the target nor the partial file


def test_hash_mismatch_keeps_nothing(loopback, tmp_path):
    loopback.files["w.pth"] = b"not the published weights"
    target = tmp_path / "w.pth"
    with pytest.raises(WeightsDownloadError, match="SHA-256"):
        download_url(loopback.url("ok", "w.pth"), target, "0" * 64, progress=False)
    assert os.listdir(tmp_path) == []


def test_pretrained_falls_back_to_the_official_pth_once(loopback, offline_caches):
    loopback.files[f"{NAME}.pth"] = official_pth(NAME).read_bytes()
    config = with_sources(NAME, loopback.url("ok", f"{NAME}.pth"),
                          sha256=hashlib.sha256(loopback.files[f"{NAME}.pth"]).hexdigest())
    model = dyhead_zoo.create_model(NAME, pretrained=True, config=config)  # the Hub repo is not cached
    assert_bit_identical(model.state_dict(), official_state_dict(NAME))
    assert os.listdir(offline_caches.checkpoints) == [f"{NAME}.pth"]
    assert pth_cache_path(config) == offline_caches.checkpoints / f"{NAME}.pth"
    dyhead_zoo.create_model(NAME, pretrained=True, config=config)
    assert loopback.requests == [f"/ok/{NAME}.pth"]  # fetched once, then read from the cache


def test_missing_hub_repo_falls_back_to_the_pth(loopback, offline_caches, monkeypatch):
    from huggingface_hub import constants

    endpoint = loopback.url("hub", "").rstrip("/")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    loopback.files["w.pth"] = official_pth(NAME).read_bytes()
    path = download_weights(with_sources(NAME, loopback.url("ok", "w.pth"), hf_repo="nobody/no-such-repo"),
                            progress=False)
    assert path == offline_caches.checkpoints / "w.pth" and path.read_bytes() == loopback.files["w.pth"]
    assert "/hub/nobody/no-such-repo/resolve/main/model.safetensors" in loopback.requests
    assert loopback.requests[-1] == "/ok/w.pth"


def test_pretrained_prefers_hub_safetensors(loopback, offline_caches):
    make_hf_cache(offline_caches.hf_cache, f"dyhead-zoo/{NAME}", converted_folder(NAME))
    config = with_sources(NAME, loopback.url("ok", f"{NAME}.pth"))
    path = download_weights(config)
    assert path.name == "model.safetensors" and offline_caches.hf_cache in path.parents
    model = dyhead_zoo.create_model(NAME, pretrained=True, config=config)
    assert_bit_identical(model.state_dict(), official_state_dict(NAME))
    assert loopback.requests == [] and not offline_caches.checkpoints.exists()


def test_offline_without_weights_explains_the_manual_steps(offline_caches):
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}/{NAME}.pth"
    config = with_sources(NAME, url)
    with pytest.raises(WeightsDownloadError) as info:
        dyhead_zoo.create_model(NAME, pretrained=True, config=config)
    message = str(info.value)
    for part in (config.weights.hf_repo, url, str(offline_caches.checkpoints / f"{NAME}.pth"),
                 "weights=PATH", f"hf download {config.weights.hf_repo}"):
        assert part in message
    assert not offline_caches.checkpoints.exists() or not any(offline_caches.checkpoints.iterdir())


def test_pretrained_in_a_fresh_process_with_hf_hub_offline(tmp_path):
    """The real environment variables, read at import time, in a new interpreter."""
    make_hf_cache(tmp_path / "hf", f"dyhead-zoo/{NAME}", converted_folder(NAME))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hf"),
           "TORCH_HOME": str(tmp_path / "torch"), "PYTHONPATH": str(REPO_ROOT)}
    code = ("import hashlib, json, dyhead_zoo\n"
            f"model = dyhead_zoo.create_model({NAME!r}, pretrained=True)\n"
            "digest = hashlib.sha256()\n"
            "for tensor in model.state_dict().values(): digest.update(tensor.numpy().tobytes())\n"
            "print(json.dumps(digest.hexdigest()))\n")
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    expected = hashlib.sha256()
    for tensor in official_state_dict(NAME).values():
        expected.update(tensor.numpy().tobytes())
    assert json.loads(run.stdout.strip().splitlines()[-1]) == expected.hexdigest()
    assert not (tmp_path / "torch").exists()  # the official .pth was not needed
