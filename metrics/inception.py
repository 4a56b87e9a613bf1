"""The FID Inception network: loaded in one place, never downloaded silently-and-forever.

pytorch-fid's 2048-d InceptionV3 with the TF-FID weights. Weights come, in order, from
a local file (`--inception_weights`), the torch hub cache, or a download that cannot
hang on a dead network; otherwise `InceptionWeightsMissing` names the file, its URL and
where to put it. Entry points: `load_inception`, `extract_features`.
"""
from __future__ import annotations

import contextlib
import hashlib
import socket
import threading
import urllib.parse
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_fid import inception as fid_inception
from tqdm import tqdm

from utils.checkpoint import CheckpointError, require_safe_torch, why_unreadable

FEATURE_DIM = 2048                    # Inception's final average-pool features
INCEPTION_SIZE = 299                  # pytorch-fid resizes every input to this
FID_WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = fid_inception.FID_WEIGHTS_URL
FID_WEIGHTS_HASH_PREFIX = "6726825d"  # sha256 prefix, checked by torch.hub on download
DOWNLOAD_TIMEOUT_S = 15.0


class InceptionWeightsMissing(RuntimeError):
    """The FID Inception weights are neither given, cached, nor downloadable (or they are unreadable)."""


def hub_weights_path() -> Path:
    """Where torch.hub (and so pytorch-fid) keeps the FID Inception weights."""
    return Path(torch.hub.get_dir()) / "checkpoints" / FID_WEIGHTS_FILENAME


def _missing_weights_message(reason: str) -> str:
    return (f"FID Inception weights are not available ({reason}).\n"
            f"  file:  {FID_WEIGHTS_FILENAME}\n"
            f"  get it from: {FID_WEIGHTS_URL}\n"
            f"  and place it at: {hub_weights_path()}\n"
            f"  or pass --inception_weights FILE (load_inception(weights=FILE) from Python).")


def _download_weights(url: str, destination: Path, timeout: float = DOWNLOAD_TIMEOUT_S) -> None:
    """Download `url` to `destination` without ever hanging on a dead network.

    A reachability probe runs in a daemon thread (name resolution ignores socket
    timeouts); the download itself runs with a per-operation socket timeout.
    """
    host = urllib.parse.urlparse(url).hostname
    outcome = {}

    def probe():
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            outcome["ok"] = True
        except OSError as error:  # DNS failure, refused, unreachable, timeout
            outcome["error"] = error

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 1)
    if not outcome.get("ok"):
        raise OSError(f"cannot reach {host}: {outcome.get('error', 'timed out')}")
    destination.parent.mkdir(parents=True, exist_ok=True)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)
    try:
        torch.hub.download_url_to_file(url, str(destination), hash_prefix=FID_WEIGHTS_HASH_PREFIX,
                                       progress=True)
    finally:
        socket.setdefaulttimeout(previous)


def fid_inception_architecture():
    """pytorch-fid's `fid_inception_v3()` without the weight download (random weights)."""
    net = fid_inception._inception_v3(num_classes=1008, aux_logits=False, weights=None)  # sets init_weights=False
    net.Mixed_5b = fid_inception.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = fid_inception.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = fid_inception.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = fid_inception.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = fid_inception.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = fid_inception.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = fid_inception.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = fid_inception.FIDInceptionE_1(1280)
    net.Mixed_7c = fid_inception.FIDInceptionE_2(2048)
    return net


@contextlib.contextmanager
def _fid_inception_builder(build: Callable):
    """Make pytorch-fid's InceptionV3 use `build()` instead of its downloading builder.

    A patch because `InceptionV3.__init__` calls the module-level `fid_inception_v3()`,
    which always downloads, and has no argument for a network or weights of our own;
    copying its block wiring instead would be a second copy of pytorch-fid to keep in step.
    """
    original = fid_inception.fid_inception_v3
    fid_inception.fid_inception_v3 = build
    try:
        yield
    finally:
        fid_inception.fid_inception_v3 = original


def _fingerprint(model: torch.nn.Module) -> str:
    """A short hash of the first and last conv weights: tells weight sets apart for caching."""
    convs = [p for name, p in model.state_dict().items() if name.endswith("conv.weight")]
    digest = hashlib.sha1()
    for tensor in (convs[0], convs[-1]):
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


def _read_weights(weights: Optional[str]) -> dict:
    """The state dict at `weights`, else in the hub cache, else downloaded there; InceptionWeightsMissing."""
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise InceptionWeightsMissing(_missing_weights_message(f"no file at --inception_weights {path}"))
    else:
        path = hub_weights_path()
        if not path.is_file():
            try:
                _download_weights(FID_WEIGHTS_URL, path)
            except Exception as error:  # noqa: BLE001 - any failure means "not available"
                raise InceptionWeightsMissing(
                    _missing_weights_message(f"not in the torch hub cache and the download failed: {error}")
                ) from error
    return _load_state_dict(path)


def _load_state_dict(path: Path) -> dict:
    """The tensors of a weights file, loaded with weights_only=True: InceptionWeightsMissing, one line, for a
    file that is corrupt, not a state dict, or a pickle of Python objects (never run)."""
    try:
        require_safe_torch()
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except CheckpointError as error:
        raise InceptionWeightsMissing(str(error)) from None
    except Exception as error:  # noqa: BLE001 - truncated, corrupt, a pickle: never torch's weights_only advice
        _, reason = why_unreadable(path, error)
        raise InceptionWeightsMissing(f"{path} is not a file of FID Inception weights: {reason}") from None
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise InceptionWeightsMissing(f"{path} is not a file of FID Inception weights: it holds a "
                                      f"{type(loaded).__name__}, not a state dict of tensors")
    return loaded


def _load_weights(module: torch.nn.Module, state_dict: dict, source: Optional[str]) -> None:
    """load_state_dict; InceptionWeightsMissing (one line) when the tensors are another network's."""
    expected = module.state_dict()
    missing, unexpected = sorted(set(expected) - set(state_dict)), sorted(set(state_dict) - set(expected))
    reshaped = sorted(k for k in set(expected) & set(state_dict) if expected[k].shape != state_dict[k].shape)
    if missing or unexpected or reshaped:
        where = source or hub_weights_path()
        differences = [f"{len(names)} {what}, e.g. {names[0]}" for names, what in
                       ((missing, "missing"), (unexpected, "unexpected"), (reshaped, "of another shape")) if names]
        raise InceptionWeightsMissing(f"{where} holds weights of another network than the FID Inception "
                                      f"({'; '.join(differences)}); use {FID_WEIGHTS_FILENAME} from "
                                      f"{FID_WEIGHTS_URL}")
    module.load_state_dict(state_dict)


def load_inception(weights: Optional[str] = None, device="cpu", random_init: bool = False,
                   input_size: int = INCEPTION_SIZE):
    """pytorch-fid's `InceptionV3` returning the 2048-d pool features, in eval mode.

    Weights, in order: `weights` (a local state-dict file); the torch hub cache
    (`hub_weights_path()`); a download with a short timeout. If all fail, raises
    `InceptionWeightsMissing` naming the file, its URL and where to put it.
    `random_init=True` gives the same architecture with random weights (tests: no
    download). `input_size` < 299 shrinks the input (only for fast tests: the scores
    are then not comparable with anything). The model takes (B, 3, H, W) in [0, 1].
    """
    loaded = None if random_init else _read_weights(weights)
    # A saved InceptionV3 wrapper (keys "blocks.*") loads into the wrapper; pytorch-fid's release
    # file into the bare network.
    wrapper_state_dict = loaded if loaded is not None and any(k.startswith("blocks.") for k in loaded) else None
    state_dict = loaded if wrapper_state_dict is None else None

    def build():
        net = fid_inception_architecture()
        if state_dict is not None:
            _load_weights(net, state_dict, weights)
        return net

    block_index = fid_inception.InceptionV3.BLOCK_INDEX_BY_DIM[FEATURE_DIM]
    with _fid_inception_builder(build):
        model = fid_inception.InceptionV3([block_index], resize_input=True, normalize_input=True)
    if random_init:
        # PyTorch's default conv init shrinks the signal to ~1e-8 over Inception's depth
        # (all images then share one feature vector); He init keeps features informative.
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    if wrapper_state_dict is not None:
        _load_weights(model, wrapper_state_dict, weights)
    if input_size != INCEPTION_SIZE:
        if input_size < 75:
            raise ValueError("Inception needs inputs of at least 75 px")
        model.resize_input = False
        model.register_forward_pre_hook(
            lambda module, args: (F.interpolate(args[0], size=(input_size, input_size), mode="bilinear",
                                                align_corners=False),))
    model.fingerprint = f"{_fingerprint(model)}_{input_size}"
    return model.eval().to(device)


@torch.no_grad()
def extract_features(batches: Iterable[torch.Tensor], inception, device="cpu", total: Optional[int] = None,
                     desc: str = "inception") -> np.ndarray:
    """Pool features (N, 2048) of image batches (B, 3, H, W) in [0, 1]."""
    features = []
    with tqdm(total=total, desc=desc, unit="img", leave=False, dynamic_ncols=True) as bar:
        for images in batches:
            images = images.to(device=device, dtype=torch.float32)
            pooled = inception(images)[0]  # (B, 2048, 1, 1)
            features.append(pooled.reshape(pooled.shape[0], -1).cpu().numpy().astype(np.float64))
            bar.update(images.shape[0])
    return np.concatenate(features, axis=0) if features else np.zeros((0, FEATURE_DIM))
