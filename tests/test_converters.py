"""dyhead_zoo/converters/ (installed as dyhead_zoo.converters; `dyhead-zoo convert/upload/pin-hashes`):
official .pth -> Hub folder -> model, bit for bit; provenance (issue 9 item 3); the upload
command; the ``from_pretrained`` / ``save_pretrained`` / ``push_to_hub`` mixin, loading strictly."""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import official_state_dict
from hub_testing import (  # noqa: F401
    MIRROR_FILES,
    MIRROR_REPO,
    REPO_ROOT,
    assert_bit_identical,
    bare_pth,
    cache_hub_file,
    converted_folder,
    loopback,
    make_hf_cache,
    official_pth,
    offline_caches,
)
from huggingface_hub import ModelCard
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import dyhead_zoo
import dyhead_zoo.configs
from dyhead_zoo import DyHeadDetector
from dyhead_zoo.categories import COCO_CATEGORY_IDS, COCO_CLASS_NAMES
from dyhead_zoo.cli import main as cli
from dyhead_zoo.converters import to_hub_folder, upload
from dyhead_zoo.weights.checkpoint import CheckpointMismatchError, file_sha256
from dyhead_zoo.weights.hub import config_from_json

NAME = "dyhead_r50_atss_fpn_1x"
FILES = ["README.md", "config.json", "model.safetensors"]


@pytest.fixture(scope="module")
def cli_folder(tmp_path_factory):
    """The converter run as its command line; returns (folder, stdout)."""
    out = tmp_path_factory.mktemp("cli") / NAME
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = to_hub_folder.main([NAME, "--checkpoint", str(official_pth(NAME)), "--out", str(out), "--no-progress"])
    assert code == 0
    return out, stdout.getvalue()


def test_converter_writes_the_hub_folder(cli_folder):
    folder, stdout = cli_folder
    assert sorted(os.listdir(folder)) == FILES
    for name in FILES:
        assert name in stdout
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        metadata = f.metadata()
    assert metadata["variant"] == NAME
    assert metadata["source_sha256"] == file_sha256(official_pth(NAME))
    assert "source_url" not in metadata  # a local file: its origin is unknown, and never the official URL
    assert f"input SHA-256 {file_sha256(official_pth(NAME))}: UNVERIFIED source" in stdout


def test_config_json_rebuilds_the_variant(cli_folder):
    data = json.loads((cli_folder[0] / "config.json").read_text())
    assert config_from_json(data) == dyhead_zoo.get_config(NAME)
    assert data["class_names"] == list(COCO_CLASS_NAMES) and data["category_ids"] == list(COCO_CATEGORY_IDS)
    assert [s["role"] for s in data["weights"]["sources"]] == ["project", "official", "mirror"]
    assert data["weights"]["sources"][1]["url"] == dyhead_zoo.get_config(NAME).weights.url
    with pytest.raises(ValueError, match="unknown ModelConfig settings"):
        config_from_json({**data, "not_a_setting": 1})


def test_model_card_header(cli_folder):
    card = ModelCard.load(cli_folder[0] / "README.md")
    assert card.data.library_name == "dyhead-zoo"
    assert card.data.license == "mit"
    assert card.data.datasets == ["detection-datasets/coco"]
    assert {"object-detection", "dyhead"} <= set(card.data.tags)
    (result,) = card.data.eval_results
    assert (result.task_type, result.metric_type) == ("object-detection", "mAP")
    assert result.metric_value == dyhead_zoo.get_config(NAME).published_map
    assert card.data.model_name == NAME
    assert f'DyHeadDetector.from_pretrained("dyhead-zoo/{NAME}")' in card.text
    assert "@inproceedings{dai2021dynamic" in card.text
    assert file_sha256(official_pth(NAME)) in card.text


@pytest.mark.parametrize("name", dyhead_zoo.list_models())
def test_round_trip_is_bit_identical(name, tmp_path):
    folder = to_hub_folder.convert(name, tmp_path / name, official_pth(name), progress=False)
    model = DyHeadDetector.from_pretrained(folder)
    assert not model.training and model.config == dyhead_zoo.get_config(name)
    assert_bit_identical(model.state_dict(), official_state_dict(name))
    assert load_file(str(folder / "model.safetensors")).keys() == official_state_dict(name).keys()


def test_create_model_takes_the_folder_as_weights():
    model = dyhead_zoo.create_model(NAME, weights=converted_folder(NAME))
    assert_bit_identical(model.state_dict(), official_state_dict(NAME))


def test_converter_refuses_another_variants_checkpoint(tmp_path):
    with pytest.raises(CheckpointMismatchError, match="missing keys"):
        to_hub_folder.convert("dyhead_swint_atss_fpn_2x_ms", tmp_path / "out", official_pth(NAME), progress=False)
    assert not (tmp_path / "out").exists()


def test_from_pretrained_reads_a_hub_repo_from_the_cache(offline_caches):
    repo = f"dyhead-zoo/{NAME}"
    make_hf_cache(offline_caches.hf_cache, repo, converted_folder(NAME))
    model = DyHeadDetector.from_pretrained(repo)
    assert model.config == dyhead_zoo.get_config(NAME)
    assert_bit_identical(model.state_dict(), official_state_dict(NAME))


def test_from_pretrained_is_strict(tmp_path):
    folder = tmp_path / "tampered"
    shutil.copytree(converted_folder(NAME), folder)
    state = load_file(str(folder / "model.safetensors"))
    dropped = sorted(state)[0]
    del state[dropped]
    state["head.extra.weight"] = torch.zeros(1)
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointMismatchError) as info:
        DyHeadDetector.from_pretrained(folder)
    assert dropped in str(info.value) and "head.extra.weight" in str(info.value)
    (folder / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        DyHeadDetector.from_pretrained(folder)


def test_save_pretrained_round_trip(tmp_path):
    from conftest import random_model

    model = random_model(NAME)
    model.save_pretrained(tmp_path / "saved")
    assert sorted(os.listdir(tmp_path / "saved")) == FILES
    assert (json.loads((tmp_path / "saved" / "config.json").read_text())
            == json.loads((converted_folder(NAME) / "config.json").read_text()))
    again = DyHeadDetector.from_pretrained(tmp_path / "saved")
    assert_bit_identical(again.state_dict(), model.state_dict())
    assert ModelCard.load(tmp_path / "saved" / "README.md").data.eval_results[0].metric_value == 42.4


class FakeHfApi:
    """Records what would be sent to the Hub."""

    calls: list = []

    def __init__(self, token=None, **kwargs) -> None:
        FakeHfApi.calls.append(("init", token))

    def create_repo(self, repo_id, **kwargs):
        FakeHfApi.calls.append(("create_repo", repo_id, kwargs))
        return type("RepoUrl", (), {"repo_id": repo_id})()

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        files = sorted(p.name for p in Path(folder_path).iterdir())
        FakeHfApi.calls.append(("upload_folder", repo_id, files, kwargs))
        return type("CommitInfo", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/0"})()


@pytest.fixture
def fake_hub(monkeypatch):
    FakeHfApi.calls = []
    monkeypatch.setattr(upload, "HfApi", FakeHfApi)
    monkeypatch.setattr("huggingface_hub.hub_mixin.HfApi", FakeHfApi)
    return FakeHfApi.calls


def test_push_to_hub_uploads_the_folder(fake_hub):
    from conftest import random_model

    random_model(NAME).push_to_hub("someone/my-dyhead")
    (upload_call,) = [c for c in fake_hub if c[0] == "upload_folder"]
    assert upload_call[1] == "someone/my-dyhead" and upload_call[2] == FILES


def test_upload_dry_run_shows_the_plan(fake_hub, monkeypatch, capsys, offline_caches):
    monkeypatch.setattr(upload, "get_token", lambda: None)
    folder = converted_folder(NAME)
    assert upload.main([str(folder), "--repo", "someone/dyhead", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"would upload {folder} to https://huggingface.co/someone/dyhead" in out
    assert "converted from an unverified checkpoint" in out and "weights: unverified" in out
    for name in FILES:
        assert f"{name}  sha256:{file_sha256(folder / name)}" in out
    assert "token: none" in out
    assert fake_hub == []  # nothing contacted the Hub


def test_upload_sends_one_commit_with_the_token(fake_hub, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", "hf_from_env")
    url = upload.upload(converted_folder(NAME), "someone/dyhead", private=True)
    assert url == "https://huggingface.co/someone/dyhead/commit/0"
    assert fake_hub[0] == ("init", "hf_from_env")
    assert fake_hub[1] == ("create_repo", "someone/dyhead", {"repo_type": "model", "private": True, "exist_ok": True})
    assert fake_hub[2][:3] == ("upload_folder", "someone/dyhead", FILES)
    assert fake_hub[2][3]["allow_patterns"] == ["model.safetensors", "config.json", "README.md"]


def test_upload_refuses_an_incomplete_folder(tmp_path, fake_hub, capsys):
    shutil.copytree(converted_folder(NAME), tmp_path / "folder")
    (tmp_path / "folder" / "README.md").unlink()
    assert upload.main([str(tmp_path / "folder"), "--repo", "someone/dyhead", "--dry-run"]) == 1
    assert "lacks README.md" in capsys.readouterr().err


def test_upload_runs_as_an_installed_module(tmp_path):
    """Issue 9 item 12: the converters are installed (dyhead_zoo.converters), not only importable
    from the repository root."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_TOKEN": "", "HF_HOME": str(tmp_path / "hf-home")}
    env.pop("PYTHONPATH", None)
    run = subprocess.run([sys.executable, "-m", "dyhead_zoo.converters.upload", str(converted_folder(NAME)),
                          "--repo", "someone/dyhead", "--dry-run"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "would upload" in run.stdout and "model.safetensors" in run.stdout


def test_upload_requires_a_repo(fake_hub, capsys):
    """Issue 9 item 3: no default repo (the variants' own repos belong to the project)."""
    with pytest.raises(SystemExit) as info:
        upload.main([str(converted_folder(NAME)), "--dry-run"])
    assert info.value.code == 2 and "--repo" in capsys.readouterr().err
    with pytest.raises(ValueError, match="OWNER/NAME"):
        upload.upload(converted_folder(NAME), "", dry_run=True)
    assert fake_hub == []


def test_converting_an_unpinned_checkpoint_is_not_called_official(cli_folder):
    """Issue 9 item 3: any checkpoint converted while no hash is pinned gets an "unverified
    source" card that records its SHA-256, and no official URL or bit-identity claim."""
    sha256 = file_sha256(official_pth(NAME))
    assert dyhead_zoo.get_config(NAME).weights.sha256 == ""
    card = ModelCard.load(cli_folder[0] / "README.md").text
    assert "**Unverified source.**" in card and f"SHA-256 `{sha256}`" in card
    assert "official checkpoint <" not in card and dyhead_zoo.get_config(NAME).weights.url not in card
    with safe_open(str(cli_folder[0] / "model.safetensors"), "pt") as f:
        assert f.metadata()["source"] == "unverified"


def test_a_checkpoint_with_the_pinned_hash_is_called_official(tmp_path):
    """Issue 9 item 3: "official" only when the input's SHA-256 equals the pinned one."""
    import dataclasses

    config = dyhead_zoo.get_config(NAME)
    sha256 = file_sha256(official_pth(NAME))
    sources = tuple(dataclasses.replace(s, sha256=sha256) if s.role == "official" else s
                    for s in config.weights.sources)
    pinned = dataclasses.replace(config, weights=dataclasses.replace(config.weights, sources=sources))
    folder = to_hub_folder.convert(NAME, tmp_path / "out", official_pth(NAME), progress=False, config=pinned)
    card = ModelCard.load(folder / "README.md").text
    assert f"Converted from the official checkpoint <{config.weights.url}> (SHA-256 `{sha256}`" in card
    assert "Unverified" not in card
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        assert f.metadata()["source"] == "official" and f.metadata()["source_sha256"] == sha256


def test_convert_and_upload_are_dyhead_zoo_subcommands(tmp_path, fake_hub, monkeypatch, capsys):
    """Issue 9 item 12: `dyhead-zoo convert` and `dyhead-zoo upload`."""
    monkeypatch.setattr(upload, "get_token", lambda: None)
    out = tmp_path / NAME
    assert cli.main(["convert", NAME, "--checkpoint", str(official_pth(NAME)), "--out", str(out),
                     "--no-progress"]) == 0
    assert sorted(os.listdir(out)) == FILES and "UNVERIFIED source" in capsys.readouterr().out
    assert cli.main(["upload", str(out), "--repo", "someone/dyhead", "--dry-run"]) == 0
    assert "would upload" in capsys.readouterr().out and fake_hub == []
    with pytest.raises(SystemExit):
        cli.main(["upload", str(out), "--dry-run"])  # --repo is required
    assert cli.main(["convert", NAME, "--checkpoint", str(tmp_path / "absent.pth"), "--out", str(tmp_path / "x"),
                     "--no-progress"]) == 2
    assert "absent.pth" in capsys.readouterr().err


def test_pin_hashes_prints_the_values_to_pin(tmp_path, monkeypatch, loopback, offline_caches, capsys):
    """Issue 9 item 3: the command that downloads each official (and mirror) file and prints
    its SHA-256, run here against a loopback server and a local Hugging Face cache."""
    import dataclasses

    config = dyhead_zoo.get_config(NAME)
    url = loopback.url("ok", f"{NAME}.pth")
    sources = tuple(dataclasses.replace(s, url=url) if s.role == "official" else s for s in config.weights.sources)
    patched = dataclasses.replace(config, weights=dataclasses.replace(config.weights, sources=sources))
    monkeypatch.setattr(dyhead_zoo.configs, "_configs", lambda: {NAME: patched})
    loopback.files[f"{NAME}.pth"] = official_pth(NAME)
    link = cache_hub_file(offline_caches.hf_cache, MIRROR_REPO, f"dyhead/{MIRROR_FILES[NAME]}", bare_pth(NAME))
    assert cli.main(["pin-hashes", "--all", "--no-progress"]) == 0
    out = capsys.readouterr().out
    official_entry = f'role = "official"\nurl = "{url}"\nsha256 = "{file_sha256(official_pth(NAME))}"'
    commit = link.parent.parent.name
    mirror_entry = (f'role = "mirror"\nrepo = "{MIRROR_REPO}"\nrevision = "{commit}"\n'
                    f'filename = "dyhead/{MIRROR_FILES[NAME]}"\nsha256 = "{file_sha256(bare_pth(NAME))}"')
    assert official_entry in out and mirror_entry in out
    assert "holds the variant's" in out and "same values as the official file" in out
    assert loopback.requests == [f"/ok/{NAME}.pth"]
