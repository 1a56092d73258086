"""Fetching the published weights once into the usual caches.

Two sources per variant, both recorded in its ``configs/*.toml`` ``[weights]`` section: the
converted ``model.safetensors`` in a Hugging Face Hub repo (preferred; kept in the Hugging Face
cache) and the official release's ``.pth`` (the fallback; kept in the torch hub cache,
``torch.hub.get_dir()/checkpoints``). Downloads go to a temporary file beside the target and
are renamed into place only once complete, so a half-written file is never used.
"""
from __future__ import annotations

import hashlib
import http.client
import logging
import os
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

import torch

from .checkpoint import SAFETENSORS_NAME
from .config import ModelConfig

logger = logging.getLogger(__name__)


class WeightsDownloadError(OSError):
    """The weights could not be fetched; the message says how to install them by hand.

    ``reason`` is the short cause (for example ``HTTP Error 500``), without the advice.
    """

    def __init__(self, message: str, *, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason or message


def pth_cache_path(config: ModelConfig) -> Path:
    """Where the official ``.pth`` of ``config`` is kept: ``torch.hub.get_dir()/checkpoints/<file>``
    (``TORCH_HOME`` and ``torch.hub.set_dir`` move it)."""
    filename = os.path.basename(urllib.parse.urlparse(config.weights.url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def _failure(url: str, target: Path, reason: str) -> WeightsDownloadError:
    return WeightsDownloadError(
        f"downloading {url} to {target} failed: {reason}; nothing was kept. Try again, or download the "
        f"file by hand and save it as {target}, or pass weights=PATH (a .pth or .safetensors file) to "
        "create_model.", reason=reason)


def download_url(url: str, target: str | os.PathLike, sha256: str = "", progress: bool = True,
                 timeout: float = 60.0) -> Path:
    """Download ``url`` to ``target`` atomically, with a tqdm progress bar on stderr.

    The bytes go to a temporary file in ``target``'s folder, which is checked against the
    server's Content-Length and, when ``sha256`` is given, its hash, and only then renamed to
    ``target``. On any failure the temporary file is removed and :class:`WeightsDownloadError`
    names the URL, the target and how to install the file by hand. Returns ``target``.
    """
    from tqdm.auto import tqdm

    from . import __version__

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".partial")
    try:
        digest = hashlib.sha256()
        received = 0
        request = urllib.request.Request(url, headers={"User-Agent": f"dyhead-zoo/{__version__}"})
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            expected = int(length) if length is not None else None
            with tqdm(total=expected, unit="B", unit_scale=True, unit_divisor=1024, desc=target.name,
                      disable=not progress) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            out.flush()
            os.fsync(out.fileno())
        if expected is not None and received != expected:
            raise _failure(url, target, f"received {received} of {expected} bytes, the transfer was cut short")
        if sha256 and digest.hexdigest() != sha256.lower():
            raise _failure(url, target, f"SHA-256 {digest.hexdigest()} is not the expected {sha256}")
        os.replace(partial, target)
    except BaseException as err:
        Path(partial).unlink(missing_ok=True)
        if isinstance(err, (OSError, http.client.HTTPException)) and not isinstance(err, WeightsDownloadError):
            raise _failure(url, target, str(err) or type(err).__name__) from err
        raise
    return target


def fetch_official_checkpoint(config: ModelConfig, progress: bool = True) -> Path:
    """The official ``.pth`` of ``config`` in the torch hub cache, downloaded first if absent."""
    target = pth_cache_path(config)
    if target.is_file():
        return target
    return download_url(config.weights.url, target, config.weights.sha256, progress)


def fetch_hub_weights(config: ModelConfig) -> Path:
    """``model.safetensors`` of ``config``'s Hub repo, through the Hugging Face cache (which
    honours ``HF_HUB_OFFLINE``, ``HF_HUB_CACHE`` and the usual token)."""
    from huggingface_hub import hf_hub_download

    from . import __version__

    return Path(hf_hub_download(config.weights.hf_repo, SAFETENSORS_NAME,
                                library_name="dyhead-zoo", library_version=__version__))


def download_weights(config: ModelConfig, progress: bool = True) -> Path:
    """Local path of the published weights of ``config``, fetched once into the usual caches.

    Tries the Hub repo's ``model.safetensors`` first, then the official ``.pth``. When
    neither can be had, raises :class:`WeightsDownloadError` listing both sources, why each
    failed, and where to put a file downloaded by hand.
    """
    from huggingface_hub import constants
    from huggingface_hub.errors import EntryNotFoundError

    failures = []
    if config.weights.hf_repo:
        try:
            return fetch_hub_weights(config)
        except (OSError, EntryNotFoundError, ValueError) as err:
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            if constants.is_offline_mode():
                reason += " (HF_HUB_OFFLINE is set)"
            failures.append(f"Hugging Face Hub repo {config.weights.hf_repo} ({SAFETENSORS_NAME}): {reason}")
            logger.info("no %s from %s (%s); trying %s", SAFETENSORS_NAME, config.weights.hf_repo, reason,
                        config.weights.url)
    target = pth_cache_path(config)
    try:
        return fetch_official_checkpoint(config, progress)
    except WeightsDownloadError as err:
        failures.append(f"official checkpoint {config.weights.url}: {err.reason}")
    hub_step = (f"\n  - or download {SAFETENSORS_NAME} from https://huggingface.co/{config.weights.hf_repo} "
                f"with `hf download {config.weights.hf_repo}` (kept in {constants.HF_HUB_CACHE});"
                if config.weights.hf_repo else "")
    raise WeightsDownloadError(
        f"could not get the weights of {config.name}:\n" + "".join(f"  - {f}\n" for f in failures)
        + f"To install them by hand (for example when offline):\n  - download {config.weights.url} and save it "
        f"as {target};" + hub_step + "\n  - or pass weights=PATH (a .pth or .safetensors file) to create_model.")
