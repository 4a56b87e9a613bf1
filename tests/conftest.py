"""Shared pytest fixtures: a tiny curriculum, generator and checkpoint (CPU, seconds to build), and the
devices of the device-aware tests.

A test that takes a `device` argument runs once per available device: the CPU, and CUDA where
there is one (`--device cuda` or `--device cpu` picks one). Such tests carry the marker
`device_aware`: `pytest -m device_aware` runs the checks of the CUDA path (field numerics,
a whole training step, fp16 overflows and the loss-scale floor, checkpoints with the CUDA RNG
state), which is what `benchmarks/gpu_acceptance.py` runs first on a GPU.

Tests marked `slow` (a second or more on our 2-core machine: training runs, launches of the scripts in
subprocesses, the browser) are left out by `pytest -m "not slow"`, the quick check while editing (under a
minute); README's test command and CI run everything.
"""
from __future__ import annotations

import pytest
import torch

DEVICES = ("cpu", "cuda")


def pytest_addoption(parser):
    parser.addoption("--device", action="append", choices=DEVICES, default=None,
                     help="run the device-aware tests on this device only (repeatable); default: the CPU and, "
                          "when available, CUDA")


def pytest_configure(config):
    config.addinivalue_line("markers", "device_aware: runs on every available device (tests taking a `device` "
                                       "argument); benchmarks/gpu_acceptance.py selects them on a GPU")
    config.addinivalue_line("markers", "slow: takes a second or more (training, subprocess launches of the "
                                       "scripts, the browser); pytest -m \"not slow\" leaves these out")
    requested = config.getoption("--device")
    if requested and "cuda" in requested and not torch.cuda.is_available():
        raise pytest.UsageError("--device cuda: no CUDA device is available")


def selected_devices(config) -> list:
    """The devices the device-aware tests run on."""
    requested = config.getoption("--device")
    available = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    return [d for d in available if not requested or d in requested]


def pytest_generate_tests(metafunc):
    if "device" in metafunc.fixturenames:
        devices = selected_devices(metafunc.config)
        metafunc.parametrize("device", [torch.device(d) for d in devices], ids=devices)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "device" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.device_aware)


@pytest.fixture(scope="session")
def tiny_curriculum():
    """The embedded `Synthetic` curriculum (hidden_dim 64, small decoder); a fresh copy per session."""
    from curriculums import get_curriculum

    return get_curriculum("Synthetic")


@pytest.fixture(scope="session")
def tiny_generator(tiny_curriculum):
    """A randomly initialised (seed 0) generator built from the `Synthetic` curriculum, eval mode, CPU."""
    from curriculums import extract_metadata
    from generators.generators import build_generator

    with torch.random.fork_rng(devices=[]):  # leave the global RNG as the other tests expect it
        torch.manual_seed(0)
        return build_generator(extract_metadata(tiny_curriculum, 0)).eval()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_curriculum, tiny_generator):
    """Path of a checkpoint file `<run dir>/checkpoint.pth` (so `.parent` is a run directory) holding
    the tiny generator as `generator` and `generator_ema`, the Synthetic curriculum and step 0.

    Session-scoped: treat the file as read-only.
    """
    from utils.checkpoint import save_checkpoint

    path = tmp_path_factory.mktemp("tiny_run") / "checkpoint.pth"
    state = tiny_generator.state_dict()
    save_checkpoint(path, {"generator": state, "generator_ema": state, "curriculum": tiny_curriculum,
                           "curriculum_name": "Synthetic", "step": 0})
    return path


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty torch hub cache and a network that refuses instantly (for loading the FID Inception)."""
    import urllib.error

    from metrics import inception

    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))

    def refuse(url, destination, timeout=None):
        raise urllib.error.URLError("network is unreachable (test)")

    monkeypatch.setattr(inception, "_download_weights", refuse)
    return hub


@pytest.fixture
def read_only_folder(tmp_path):
    """A folder nothing can be written to: a read-only tmpfs (as root, who may write into any chmod-ed
    folder), else a folder without write permission; skipped where neither keeps this process out."""
    import os
    import subprocess

    folder = tmp_path / "read_only"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)],
                             capture_output=True).returncode == 0
    if not mounted:
        folder.chmod(0o555)
        if os.access(folder, os.W_OK):
            pytest.skip("cannot make a folder read-only for this user")
    try:
        yield folder
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)
        else:
            folder.chmod(0o755)
