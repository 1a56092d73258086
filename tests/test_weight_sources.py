"""Issue 14 and issue 9 item 11: ordered weight sources (project Hub repo, official URL, Hub
mirror), the strict check of whatever is fetched, `dyhead-zoo download`, the cache listing of
`dyhead-zoo info`, and failing fast without network. All offline: a loopback HTTP server for
URLs, a Hugging Face cache laid out by hand (HF_HUB_OFFLINE=1) for Hub files."""
from __future__ import annotations

import dataclasses
import logging
import os
import re
import socket
from pathlib import Path

import pytest
import torch
from conftest import official_state_dict
from hub_testing import (  # noqa: F401
    MIRROR_FILES,
    MIRROR_REPO,
    assert_bit_identical,
    bare_pth,
    cache_hub_file,
    converted_folder,
    loopback,
    official_pth,
    offline_caches,
)

import dyhead_zoo
import dyhead_zoo.configs
from dyhead_zoo.cli import main as cli
from dyhead_zoo.config import ModelConfig
from dyhead_zoo.weights.cache import cache_listing
from dyhead_zoo.weights.checkpoint import file_sha256, read_state_dict
from dyhead_zoo.weights.fetch import WeightsDownloadError, fetch_weights

NAME = "dyhead_r50_atss_fpn_1x"


def with_official_url(config: ModelConfig, url: str, **mirror_changes) -> ModelConfig:
    """``config`` with its record's sources, the official one moved to ``url``."""
    sources = tuple(dataclasses.replace(s, url=url) if s.role == "official" else
                    dataclasses.replace(s, **mirror_changes) if s.role == "mirror" else s
                    for s in config.weights.sources)
    return dataclasses.replace(config, weights=dataclasses.replace(config.weights, sources=sources))


def place(role: str, caches, loopback, name: str = NAME, file: Path | None = None) -> None:
    """Make ``role``'s source of ``name`` hold ``file`` (default: the seeded checkpoint)."""
    config = dyhead_zoo.get_config(name)
    if role == "project":
        cache_hub_file(caches.hf_cache, config.weights.hf_repo, "model.safetensors",
                       file or converted_folder(name) / "model.safetensors")
    elif role == "official":
        loopback.files[f"{name}.pth"] = file or official_pth(name)
    else:
        cache_hub_file(caches.hf_cache, MIRROR_REPO, f"dyhead/{MIRROR_FILES[name]}", file or official_pth(name))


@pytest.mark.parametrize("name", dyhead_zoo.list_models())
def test_records_list_project_official_mirror_in_order(name):
    sources = dyhead_zoo.get_config(name).weights.sources
    assert [s.role for s in sources] == ["project", "official", "mirror"]
    project, official, mirror = sources
    assert (project.repo, project.filename) == (f"dyhead-zoo/{name}", "model.safetensors")
    assert official.url == f"https://xiyang.blob.core.windows.net/public/{name}.pth"
    assert (mirror.repo, mirror.filename, mirror.revision) == (MIRROR_REPO, f"dyhead/{MIRROR_FILES[name]}", "main")
    assert dyhead_zoo.weight_sources(name)["sources"] == [dataclasses.asdict(s) for s in sources]


@pytest.mark.parametrize("present", [("project", "official", "mirror"), ("official", "mirror"), ("mirror",)])
def test_sources_are_tried_in_order(present, loopback, offline_caches):
    for role in present:
        place(role, offline_caches, loopback)
    config = with_official_url(dyhead_zoo.get_config(NAME), loopback.url("ok", f"{NAME}.pth"))
    fetched = fetch_weights(config, progress=False)
    assert fetched.source.role == present[0]
    # The official URL is asked only when the project repo had nothing, and never after success.
    assert loopback.requests == ([] if present[0] == "project" else [f"/ok/{NAME}.pth"])
    assert (offline_caches.checkpoints / f"{NAME}.pth").is_file() == (present[0] == "official")


@pytest.mark.parametrize("layout", ["detectron2", "bare"])
def test_mirror_file_in_either_layout_loads_bit_identical(layout, loopback, offline_caches):
    place("mirror", offline_caches, loopback, file=official_pth(NAME) if layout == "detectron2" else bare_pth(NAME))
    config = with_official_url(dyhead_zoo.get_config(NAME), loopback.url("ok", f"{NAME}.pth"))  # serves 404
    if layout == "bare":  # the whole path once: create_model loads what the mirror holds
        model = dyhead_zoo.create_model(NAME, pretrained=True, config=config)
        assert_bit_identical(model.state_dict(), official_state_dict(NAME))
    fetched = fetch_weights(config, progress=False)
    assert fetched.source.role == "mirror" and loopback.requests[-1] == f"/ok/{NAME}.pth"
    assert_bit_identical(read_state_dict(fetched.path), official_state_dict(NAME))


def test_a_file_that_fails_the_check_is_reported_and_the_next_source_used(tmp_path, loopback, offline_caches,
                                                                          caplog):
    from safetensors.torch import save_file

    state = dict(official_state_dict(NAME))
    key = list(state)[7]
    state[key] = state[key][:1]  # one tensor with the wrong shape
    save_file(state, str(tmp_path / "model.safetensors"))
    place("project", offline_caches, loopback, file=tmp_path / "model.safetensors")
    place("official", offline_caches, loopback)
    config = with_official_url(dyhead_zoo.get_config(NAME), loopback.url("ok", f"{NAME}.pth"))
    with caplog.at_level(logging.WARNING, logger="dyhead_zoo.weights.fetch"):
        fetched = fetch_weights(config, progress=False)
    assert fetched.source.role == "official"
    (record,) = caplog.records
    assert f"project dyhead-zoo/{NAME}@main:model.safetensors" in record.getMessage()
    assert f"first mismatching key: {key}: shape" in record.getMessage()


@pytest.mark.parametrize("defect", ["dtype", "missing", "pinned hash"])
def test_a_mirror_file_that_fails_is_named_and_never_used(defect, tmp_path, loopback, offline_caches):
    state = dict(official_state_dict(NAME))
    key = list(state)[3]
    if defect == "dtype":
        state[key] = state[key].to(torch.int64)
    elif defect == "missing":
        del state[key]
    torch.save({"model": state}, tmp_path / "mirror.bin")
    place("mirror", offline_caches, loopback, file=tmp_path / "mirror.bin")
    config = with_official_url(dyhead_zoo.get_config(NAME), loopback.url("ok", f"{NAME}.pth"),
                               sha256="0" * 64 if defect == "pinned hash" else "")
    with pytest.raises(WeightsDownloadError) as info:
        fetch_weights(config, progress=False)
    line = next(line for line in str(info.value).splitlines() if line.strip().startswith("- mirror"))
    assert f"mirror {MIRROR_REPO}@main:dyhead/{MIRROR_FILES[NAME]}" in line and "not used" in line
    expected = {"dtype": f"first mismatching key: {key}: dtype torch.int64, the model has torch.float32",
                "missing": f"first mismatching key: missing key {key}",
                "pinned hash": f"SHA-256 {file_sha256(tmp_path / 'mirror.bin')}, not the pinned {'0' * 64}"}[defect]
    assert expected in line


def test_unreachable_network_fails_fast_with_cli_advice(monkeypatch, offline_caches):
    """Issue 9 item 11: no Hugging Face retries (their back-off sleeps took ~29 s) when the
    network is unreachable; the message names --weights PATH and `dyhead-zoo download`."""
    from huggingface_hub import constants
    from huggingface_hub.utils import _http

    with socket.socket() as closed:  # a loopback port nobody listens on: "connection refused"
        closed.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{closed.getsockname()[1]}"
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "ENDPOINT", dead)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", dead + "/{repo_id}/resolve/{revision}/{filename}")
    sleeps = []
    monkeypatch.setattr(_http.time, "sleep", sleeps.append)
    config = with_official_url(dyhead_zoo.get_config(NAME), f"{dead}/{NAME}.pth")
    with pytest.raises(WeightsDownloadError) as info:
        fetch_weights(config, progress=False)
    assert sleeps == []  # no back-off retry
    message = str(info.value)
    assert message.count("no network: cannot connect to 127.0.0.1") == 3
    assert "--weights PATH" in message and f"dyhead-zoo download {NAME}" in message
    # Cached files still load while the network is unreachable.
    place("project", offline_caches, None)
    assert fetch_weights(config, progress=False).source.role == "project" and sleeps == []


def _patched_registry(monkeypatch, loopback, names) -> None:
    configs = {n: with_official_url(dyhead_zoo.get_config(n), loopback.url("ok", f"{n}.pth")) for n in names}
    monkeypatch.setattr(dyhead_zoo.configs, "_configs", lambda: configs)


def test_download_all_prints_path_and_sha256(monkeypatch, loopback, offline_caches, capsys):
    names = dyhead_zoo.list_models()
    _patched_registry(monkeypatch, loopback, names)
    for name in names:
        place("official", offline_caches, loopback, name)
    assert cli.main(["download", "--all", "--no-progress"]) == 0
    out = capsys.readouterr().out
    for name in names:
        path = offline_caches.checkpoints / f"{name}.pth"
        block = re.search(rf"^{name}: ok, from official (\S+)\n  path    (\S+)\n  sha256  (\w+)$", out, re.M)
        assert block.groups() == (loopback.url("ok", f"{name}.pth"), str(path), file_sha256(official_pth(name)))
        assert file_sha256(path) == block.group(3)
    assert "4 of 4 variants ready." in out and str(offline_caches.checkpoints) in out
    assert sorted(loopback.requests) == sorted(f"/ok/{n}.pth" for n in names)


def test_download_exit_codes_and_copy_to_a_folder(monkeypatch, loopback, offline_caches, tmp_path, capsys):
    ok, missing = NAME, "dyhead_r50_retina_fpn_1x"
    _patched_registry(monkeypatch, loopback, [ok, missing])
    place("mirror", offline_caches, loopback, ok, file=bare_pth(ok))
    assert cli.main(["download", ok, "--to", str(tmp_path / "out"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    copy = tmp_path / "out" / f"{ok}.bin"
    assert f"{ok}: ok, from mirror {MIRROR_REPO}@main:dyhead/{MIRROR_FILES[ok]}" in out
    assert f"path    {copy}\n  sha256  {file_sha256(bare_pth(ok))}" in out and file_sha256(copy) == file_sha256(bare_pth(ok))
    assert_bit_identical(dyhead_zoo.create_model(ok, weights=copy).state_dict(), official_state_dict(ok))

    assert cli.main(["download", ok, missing, "--no-progress"]) == 1  # one variant has no source
    captured = capsys.readouterr()
    assert f"{ok}: ok" in captured.out and "1 of 2 variants ready." in captured.out
    assert f"{missing}: FAILED" in captured.err and f"official {loopback.url('ok', missing + '.pth')}" in captured.err

    for argv in (["download"], ["download", "no_such_model"], ["download", ok, "--all"]):
        assert cli.main(argv) == 2, argv
        assert "dyhead-zoo: error:" in capsys.readouterr().err


def test_info_lists_which_variants_are_cached(monkeypatch, loopback, offline_caches, capsys):
    place("project", offline_caches, loopback, NAME)
    swin = "dyhead_swint_atss_fpn_2x_ms"
    (offline_caches.checkpoints).mkdir(parents=True)
    os.link(official_pth(NAME), offline_caches.checkpoints / f"{swin}.pth")  # any file: listing does not read
    lines = cache_listing()
    assert re.fullmatch(rf"weights +torch hub cache +{re.escape(str(offline_caches.checkpoints))}", lines[0])
    assert re.fullmatch(rf" +Hugging Face cache +{re.escape(str(offline_caches.hf_cache))}", lines[1])
    by_name = {line.split()[0]: line for line in lines[2:]}
    assert sorted(by_name) == dyhead_zoo.list_models()
    assert re.search(rf"cached, project: {re.escape(str(offline_caches.hf_cache))}/models--dyhead-zoo--{NAME}/"
                     r"snapshots/\w+/model\.safetensors \([\d,.]+ MB\)", by_name[NAME])
    assert f"cached, official: {offline_caches.checkpoints / (swin + '.pth')}" in by_name[swin]
    other = "dyhead_r50_rcnn_fpn_1x"
    assert by_name[other].endswith(f"not cached (fetch with: dyhead-zoo download {other})")
    assert cli.main(["info"]) == 0
    assert "\n".join(lines) in capsys.readouterr().out
