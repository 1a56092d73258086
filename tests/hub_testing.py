"""Helpers for the weights, converter and hub tests, all offline: a loopback HTTP server, a
Hugging Face cache built by hand, and official-layout checkpoints converted once per process."""
from __future__ import annotations

import atexit
import functools
import hashlib
import os
import shutil
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import official_state_dict

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # dyhead_zoo/converters/ and hubconf.py live at the repository root
    sys.path.insert(0, str(REPO_ROOT))

_SCRATCH = Path(tempfile.mkdtemp(prefix="dyhead-zoo-tests-"))
atexit.register(shutil.rmtree, _SCRATCH, True)

# The public Hub mirror of the official checkpoints (issue 14): repo and file of each variant.
MIRROR_REPO = "fuliucansheng/detectron2"
MIRROR_FILES = {"dyhead_r50_atss_fpn_1x": "atss_r50_model.bin", "dyhead_r50_rcnn_fpn_1x": "faster_rcnn_r50_model.bin",
                "dyhead_r50_retina_fpn_1x": "retinanet_r50_model.bin",
                "dyhead_swint_atss_fpn_2x_ms": "atss_swin_tiny_model.bin"}


@functools.cache
def official_pth(name: str, seed: int = 0) -> Path:
    """An official-layout ``.pth`` (detectron2 checkpointer format) of seeded random weights."""
    path = _SCRATCH / f"seed{seed}" / f"{name}.pth"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": official_state_dict(name, seed), "iteration": 90000}, path)
    return path


@functools.cache
def converted_folder(name: str) -> Path:
    """The converter's Hub folder for :func:`official_pth` of ``name``."""
    from dyhead_zoo.converters.to_hub_folder import convert

    return convert(name, _SCRATCH / "hub" / name, official_pth(name), progress=False)


def cache_hub_file(cache: Path, repo: str, filename: str, file: Path) -> Path:
    """Put ``file`` into the Hugging Face cache ``cache`` as ``repo``'s ``filename`` at ``main``
    (blob, snapshot symlink, refs/main), as a real download leaves it; returns the snapshot path."""
    storage = cache / f"models--{repo.replace('/', '--')}"
    commit = hashlib.sha1(repo.encode()).hexdigest()
    blob = storage / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
    blob.parent.mkdir(parents=True, exist_ok=True)
    if not blob.exists():
        os.link(file, blob)
    link = storage / "snapshots" / commit / filename
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(blob, link.parent))
    (storage / "refs").mkdir(exist_ok=True)
    (storage / "refs" / "main").write_text(commit)
    return link


@functools.cache
def bare_pth(name: str) -> Path:
    """The seeded official-layout weights saved as a bare state_dict (no ``{"model": ...}``)."""
    path = _SCRATCH / "bare" / f"{name}.pth"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(official_state_dict(name), path)
    return path


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (a.dtype == b.dtype and a.shape == b.shape
            and torch.equal(a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8)))


def assert_bit_identical(state: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> None:
    assert list(state) == list(reference)
    differing = [k for k in reference if not same_bits(state[k], reference[k])]
    assert not differing, differing[:5]


def make_hf_cache(cache_dir: Path, repo_id: str, folder: Path) -> Path:
    """Lay ``folder``'s files out as the Hugging Face cache holds a downloaded repo
    (blobs, a snapshot of symlinks, refs/main); returns the snapshot folder."""
    storage = cache_dir / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    snapshot = storage / "snapshots" / commit
    (storage / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for file in sorted(folder.iterdir()):
        blob = storage / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        if not blob.exists():
            try:
                os.link(file, blob)
            except OSError:
                shutil.copyfile(file, blob)
        (snapshot / file.name).symlink_to(os.path.relpath(blob, snapshot))
    (storage / "refs").mkdir(exist_ok=True)
    (storage / "refs" / "main").write_text(commit)
    return snapshot


@pytest.fixture
def offline_caches(monkeypatch, tmp_path):
    """Empty torch hub and Hugging Face caches under ``tmp_path``, with the Hub offline."""
    from huggingface_hub import constants

    torch_home, hf_cache = tmp_path / "torch", tmp_path / "hf"
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(hf_cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hf_cache))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    return SimpleNamespace(torch_home=torch_home, checkpoints=torch_home / "hub" / "checkpoints", hf_cache=hf_cache)


class LoopbackServer:
    """HTTP on 127.0.0.1 serving ``files[name]`` (bytes, or a Path read per request): ``/ok/NAME`` whole, ``/truncated/NAME`` half of
    it under the full Content-Length, ``/error/NAME`` an HTTP 500; under ``/hub/`` a Hugging Face
    endpoint where every repo is missing. ``requests`` logs the paths."""

    def __init__(self) -> None:
        self.files: dict[str, bytes | Path] = {}
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_HEAD(self) -> None:
                self.do_GET()

            def do_GET(self) -> None:
                server.requests.append(self.path)
                _, mode, name = self.path.split("/", 2)
                if mode == "hub":  # a Hugging Face endpoint that has no such repo
                    self.send_response(404)
                    self.send_header("X-Error-Code", "RepoNotFound")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = server.files.get(name)
                if isinstance(data, Path):
                    data = data.read_bytes()
                if data is None or mode not in ("ok", "truncated"):
                    self.send_error(404 if data is None else 500)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data if mode == "ok" else data[: len(data) // 2])

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._httpd.server_address[1]
        threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True).start()

    def url(self, mode: str, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{mode}/{name}"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture
def loopback():
    server = LoopbackServer()
    yield server
    server.close()
