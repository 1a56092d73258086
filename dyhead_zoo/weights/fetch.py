"""Fetching the published weights once into the usual caches, checked before use.

Each variant's ``dyhead_zoo/configs/*.toml`` ``[weights]`` section lists its sources in the order they
are tried: this project's Hub repo (the converted ``model.safetensors``), the official
release's ``.pth`` and a public mirror on the Hub. Hub files live in the Hugging Face cache
(``HF_HUB_CACHE``; ``HF_HUB_OFFLINE`` honoured), URLs in the torch hub cache
(``torch.hub.get_dir()/checkpoints``). Downloads go to a temporary file beside the target and
are renamed into place only once complete. Whatever is fetched must hold exactly the variant's
tensors (names, shapes, dtype kinds) before it is used; a file that does not is reported with
its source and first mismatching key, and the next source is tried. Before touching the
network a source's host is probed once with a short timeout, so an offline machine fails in
seconds (cached files still load) instead of waiting through the Hub client's retries.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.client
import logging
import os
import socket
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from dyhead_zoo.config import ModelConfig, WeightSource, WeightSources
from dyhead_zoo.errors import DyHeadZooError
from dyhead_zoo.weights.checkpoint import file_sha256, find_mismatches, read_state_dict

logger = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 3.0  # one TCP connect per host before downloading; offline machines fail fast
ROLES = ("project", "official", "mirror")


class WeightsDownloadError(DyHeadZooError, OSError):
    """The weights could not be fetched; the message says how to install them by hand.

    ``reason`` is the short cause (for example ``HTTP Error 500``), without the advice.
    """

    def __init__(self, message: str, *, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason or message


@dataclass(frozen=True)
class FetchedWeights:
    """A weights file that passed the strict check, and the source it came from."""

    source: WeightSource
    path: Path
    sha256: str = ""  # of the file at ``path``; computed when pinned or asked for


def url_cache_path(url: str) -> Path:
    """Where the file at ``url`` is kept: ``torch.hub.get_dir()/checkpoints/<file name>``
    (``TORCH_HOME`` and ``torch.hub.set_dir`` move it)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urllib.parse.urlparse(url).path)


def pth_cache_path(config: ModelConfig) -> Path:
    """Where the official ``.pth`` of ``config`` is kept once fetched (see :func:`url_cache_path`)."""
    return url_cache_path(config.weights.url)


def _failure(url: str, target: Path, reason: str) -> WeightsDownloadError:
    return WeightsDownloadError(
        f"downloading {url} to {target} failed: {reason}; nothing was kept. Try again, or download the "
        f"file by hand and save it as {target}, or pass weights=PATH (a .pth or .safetensors file) to "
        "create_model (--weights PATH on the dyhead-zoo command line).", reason=reason)


def download_url(url: str, target: str | os.PathLike, sha256: str = "", progress: bool = True,
                 timeout: float = 60.0) -> Path:
    """Download ``url`` to ``target`` atomically, with a tqdm progress bar on stderr.

    The bytes go to a temporary file in ``target``'s folder, which is checked against the
    server's Content-Length and, when ``sha256`` is given, its hash, and only then renamed to
    ``target``. On any failure the temporary file is removed and :class:`WeightsDownloadError`
    names the URL, the target and how to install the file by hand. Returns ``target``.
    """
    from tqdm.auto import tqdm

    from dyhead_zoo.version import __version__

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


def probe(url: str, timeout: float = PROBE_TIMEOUT_S) -> str:
    """Try one TCP connection to ``url``'s host (or to the proxy configured for it).

    Returns "" when it opens within ``timeout`` seconds (or the URL is not http/https), else
    the reason, e.g.
    ``cannot connect to huggingface.co:443 ([Errno -3] Temporary failure in name resolution)``.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https"):  # file:// and the like: no host to reach
        return ""
    host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        proxy_parts = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = proxy_parts.hostname or "", proxy_parts.port or 80
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return ""
    except OSError as err:
        return f"cannot connect to {host}:{port} ({err or type(err).__name__})"


def _hub_endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def _skip(reason: str) -> WeightsDownloadError:
    """One source failed; ``reason`` goes into the list of sources tried."""
    return WeightsDownloadError(reason, reason=reason)


def _short(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _silent_tqdm():
    from tqdm.auto import tqdm

    class Silent(tqdm):
        def __init__(self, *args, **kwargs) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return Silent


def fetch_source(source: WeightSource, progress: bool = True, probes: dict[str, str] | None = None) -> Path:
    """Local path of ``source``'s file, from the cache or downloaded into it.

    Hub sources go through the Hugging Face cache, URLs through the torch hub cache. The host
    is probed first (results shared through ``probes``, keyed by host URL); unreachable, only
    a cached file can be returned. Raises :class:`WeightsDownloadError` with the short reason.
    """
    from huggingface_hub import constants, hf_hub_download

    from dyhead_zoo.version import __version__

    probes = {} if probes is None else probes

    def unreachable(url: str) -> str:
        key = urllib.parse.urlsplit(url)._replace(path="", query="", fragment="").geturl()
        if key not in probes:
            probes[key] = probe(url)
        return probes[key]

    if source.url:
        target = url_cache_path(source.url)
        if target.is_file():
            return target
        if reason := unreachable(source.url):
            raise _skip(f"not cached, and no network: {reason}")
        return download_url(source.url, target, source.sha256, progress)
    offline = constants.is_offline_mode()
    reason = "" if offline else unreachable(_hub_endpoint())
    try:
        return Path(hf_hub_download(source.repo, source.filename, revision=source.revision,
                                    local_files_only=offline or bool(reason), library_name="dyhead-zoo",
                                    library_version=__version__, tqdm_class=None if progress else _silent_tqdm()))
    except Exception as err:  # noqa: BLE001 - any failure of one source means trying the next
        cause = _short(err)
        if offline:
            cause = f"not cached, and HF_HUB_OFFLINE is set ({cause})"
        elif reason:
            cause = f"not cached, and no network: {reason}"
        raise _skip(cause) from err


def expected_tensors(config: ModelConfig) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Name -> (shape, dtype) of every state_dict entry of ``config``'s model, in order.

    Built on the meta device (no memory, no initialisation) where the model code allows it.
    """
    # The weight sources do not change the tensors: one model build per architecture.
    return _expected_tensors(dataclasses.replace(config, weights=WeightSources(config.weights.num_params)))


@functools.cache
def _expected_tensors(config: ModelConfig) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    from dyhead_zoo.models.detector import DyHeadDetector

    try:
        with torch.device("meta"):
            model = DyHeadDetector(config)
    except (NotImplementedError, RuntimeError):  # construction code that reads tensor values cannot run on meta
        model = DyHeadDetector(config)
    return {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}


def _check_file(config: ModelConfig, source: WeightSource, path: Path, sha256: str) -> None:
    if source.sha256 and sha256 != source.sha256.lower():
        raise _skip(f"{path} has SHA-256 {sha256}, not the pinned {source.sha256}; not used")
    try:
        state = read_state_dict(path)  # never arbitrary unpickling for downloaded files
    except (OSError, ValueError) as err:
        raise _skip(f"not a readable checkpoint ({_short(err)}); not used") from err
    if mismatch := find_mismatches(expected_tensors(config), state).first():
        raise _skip(f"{path} does not hold the weights of {config.name} (first mismatching key: "
                    f"{mismatch}); not used")


def fetch_weights(config: ModelConfig, progress: bool = True, roles: Iterable[str] | None = None,
                  with_sha256: bool = False) -> FetchedWeights:
    """The published weights of ``config``, from the first of its sources that has them.

    Tries ``config.weights.sources`` in order (only those whose role is in ``roles`` when
    given), each through its cache; a file must match its pinned SHA-256 (if any) and hold
    exactly the variant's tensor names, shapes and dtype kinds, else it is reported (logged
    as a warning: source, path, first mismatching key), left unused, and the next source is
    tried. ``with_sha256`` computes the file's SHA-256 even when none is pinned. When no
    source works, raises :class:`WeightsDownloadError` listing each source and why it failed,
    and how to install the weights on a machine without network.
    """
    wanted = set(ROLES if roles is None else roles)
    unknown = wanted - set(ROLES)
    if unknown:
        raise ValueError(f"unknown weight source roles {sorted(unknown)}; use {', '.join(ROLES)}")
    sources = [s for s in config.weights.sources if s.role in wanted]
    failures, probes = [], {}
    for source in sources:
        try:
            path = fetch_source(source, progress, probes)
            sha256 = file_sha256(path) if (with_sha256 or source.sha256) else ""
            _check_file(config, source, path, sha256)
            return FetchedWeights(source, path, sha256)
        except WeightsDownloadError as err:
            failures.append(f"{source.label}: {err.reason}")
            log = logger.warning if "not used" in err.reason else logger.info
            log("weights of %s: %s: %s", config.name, source.label, err.reason)
    raise WeightsDownloadError(_advice(config, failures, sources),
                               reason="; ".join(failures) or "no weight source of the requested roles")


def _advice(config: ModelConfig, failures: list[str], sources: list[WeightSource]) -> str:
    from huggingface_hub import constants

    by_hand = []
    for source in sources:
        if source.url:
            by_hand.append(f"download {source.url} and save it as {url_cache_path(source.url)}")
        else:
            by_hand.append(f"`hf download {source.repo} {source.filename} --revision {source.revision}` "
                           f"(kept in {constants.HF_HUB_CACHE})")
    return (f"could not get the weights of {config.name}:\n" + "".join(f"  - {f}\n" for f in failures)
            + "To install them (for example for a machine without network):\n"
            + f"  - run `dyhead-zoo download {config.name}` where there is network, and copy the caches it "
              "names (or its --to DIR) to this machine;\n"
            + "".join(f"  - or {step};\n" for step in by_hand)
            + "  - or pass weights=PATH (a .pth or .safetensors file) to create_model; on the dyhead-zoo "
              "command line: --weights PATH.")


def download_weights(config: ModelConfig, progress: bool = True) -> Path:
    """Local path of the published weights of ``config``, fetched and checked by :func:`fetch_weights`."""
    return fetch_weights(config, progress).path


def cached_weights(config: ModelConfig) -> list[tuple[WeightSource, Path]]:
    """(source, path) for each of ``config``'s sources whose file is already in its cache, in
    source order. Nothing is read or checked: that happens when the weights are used."""
    from huggingface_hub import try_to_load_from_cache

    found = []
    for source in config.weights.sources:
        if source.url:
            path = url_cache_path(source.url)
            if path.is_file():
                found.append((source, path))
            continue
        hit = try_to_load_from_cache(source.repo, source.filename, revision=source.revision)
        if isinstance(hit, str) and os.path.isfile(hit):
            found.append((source, Path(hit)))
    return found
