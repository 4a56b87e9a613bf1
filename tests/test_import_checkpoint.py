"""Importing the published MVCGAN checkpoints (utils/published.py, import_checkpoint.py).

The fixture `tests/fixtures/published_mvcgan/` was written by the published code's own
classes and `torch.save`, with `expected.pt` the published renderer's output for it (see its
README). All on the CPU, nothing downloaded, no pickled code run.
"""
from __future__ import annotations

import logging
import math
import os
import pickle
import shutil
import sys
import types
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import curriculums
import import_checkpoint
from curriculums import extract_metadata
from discriminators.discriminators import CCSEncoderDiscriminator
from float_tolerance import reordered_sum_atol
from generators.cameras import cam2world_from_poses
from generators.decoder import EqualizedConv2d
from generators.generators import RenderOptions, build_generator
from siren.siren import SPATIALSIRENBASELINE
from utils.checkpoint import load_checkpoint, load_generator
from utils.published import (PublishedCheckpointError, Record, convert_generator_parameters,
                             find_published_files, import_published, read_published)

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "published_mvcgan"
PUBLISHED_STEP = 123  # what the fixture's generator, discriminator and EMAs record



@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> Path:
    """The fixture imported with the CLI (all four files, FFHQ): the path of the checkpoint."""
    output = tmp_path_factory.mktemp("imported") / "ffhq_official.pth"
    assert import_checkpoint.main(["--path", str(FIXTURE), "--curriculum", "FFHQ", "--output", str(output)]) == 0
    return output


@pytest.fixture(scope="module")
def imported_state(imported) -> dict:
    return load_checkpoint(imported)


@pytest.fixture(scope="module")
def expected():
    return torch.load(FIXTURE / "expected.pt", weights_only=True)


def assert_matches_published(ours: torch.Tensor, published: torch.Tensor) -> None:
    """Float32 through nine sine layers: ~1e-4 of the output's scale between two correct implementations."""
    scale = published.abs().max().item()
    torch.testing.assert_close(ours, published, rtol=0, atol=1e-4 * scale)


# ------------------------------------------------------------ matches the published code
@pytest.mark.parametrize("view", ["frontal", "turned"])
def test_render_matches_the_published_renderer(imported_state, expected, view):
    state = imported_state
    metadata = extract_metadata(state["curriculum"], 0)
    generator = build_generator(metadata).eval()
    generator.load_state_dict(state["generator_ema"])
    options = RenderOptions.from_metadata(metadata, evaluation=True, img_size=int(expected["img_size"]),
                                          num_steps=int(expected["num_steps"]),
                                          output_size=int(expected["output_size"]))
    # The README's settings are the FFHQ curriculum's camera with eval_last_back.
    assert options.rays.fov == float(expected["fov"]) and options.integration.last_back == bool(expected["last_back"])
    assert (options.rays.ray_start, options.rays.ray_end) == (float(expected["ray_start"]), float(expected["ray_end"]))
    published = expected["views"][view]
    n = expected["z"].shape[0]
    cam2world = cam2world_from_poses(published["yaw"].float().expand(n), published["pitch"].float().expand(n))
    out = generator.staged_forward(expected["z"], options, psi=float(expected["psi"]), cam2world=cam2world,
                                   alpha=float(expected["alpha"]))
    assert_matches_published(out.image, published["image"])
    assert_matches_published(out.depth, published["depth"])


def test_discriminator_matches_the_published_one(imported_state, expected):
    state = imported_state
    metadata = extract_metadata(state["curriculum"], 0)
    discriminator = CCSEncoderDiscriminator(metadata["latent_dim"], metadata["disc_width_factor"]).eval()
    discriminator.load_state_dict(state["discriminator"])
    published = expected["discriminator"]
    with torch.no_grad():
        logit, latent, pose = discriminator(published["input"], float(published["alpha"]))
    for ours, key in ((logit, "logit"), (latent, "latent"), (pose, "pose")):
        assert_matches_published(ours, published[key])


@pytest.mark.parametrize("published_factor", ["as published", "doubled"])
def test_equalized_conv_keeps_the_published_bias_convention(published_factor):
    """The published EqualizedConv2d computes factor * conv(x, W, b); the fixture's biases are all
    zero (as initialised), so this checks the convention with non-zero ones."""
    torch.manual_seed(0)
    weight, bias = torch.randn(6, 4, 3, 3), torch.randn(6)
    factor = math.sqrt(2 / (4 * 9)) * (2 if published_factor == "doubled" else 1)
    state = convert_generator_parameters(
        [("decoder.conv0.module.weight", weight), ("decoder.conv0.module.bias", bias)],
        {"decoder.conv0.module.bias": factor})
    ours = EqualizedConv2d(4, 6, 3, padding=1)
    ours.load_state_dict({"weight": state["decoder.base.conv.weight"], "bias": state["decoder.base.conv.bias"]})
    if published_factor == "as published":  # docs/METHOD.md §5: the published bias maps over unchanged
        assert torch.equal(ours.bias, bias)
    x = torch.randn(2, 4, 5, 5)
    with torch.no_grad():
        # the factor applied before or after the 4 * 9 products (+ the bias) are summed: rounding only
        # (tests/float_tolerance.py), with factor * (|W| |x| + |b|) as the sum of |terms|
        abs_sum = factor * F.conv2d(x.abs(), weight.abs(), bias.abs(), padding=1).max().item()
        torch.testing.assert_close(ours(x), factor * F.conv2d(x, weight, bias, padding=1), rtol=0,
                                   atol=reordered_sum_atol(4 * 9 + 1, abs_sum))


def test_imported_checkpoint_contents(imported):
    raw = torch.load(imported, weights_only=True)  # state dicts and plain values only
    assert raw["step"] == PUBLISHED_STEP and raw["ema_num_updates"] == [PUBLISHED_STEP, PUBLISHED_STEP]
    assert raw["curriculum_name"] == "FFHQ"
    assert "optimizer_G" not in raw and "rng" not in raw
    curriculum = raw["curriculum"]
    assert (curriculum["hidden_dim"], tuple(curriculum["decoder_channels"]), curriculum["disc_width_factor"]) == \
        (256, (256, 256, 128, 64), 1.0)
    generator = build_generator(extract_metadata(curriculum, 0))
    for key in ("generator", "generator_ema", "generator_ema2"):
        generator.load_state_dict(raw[key])  # strict: every parameter, none of the 10 noise weights
    _, _, step = load_generator(imported)  # what fid_evaluation.py loads
    assert step == PUBLISHED_STEP
    # Three different sets of weights: the EMA shadows were not mixed up with the raw weights.
    name = "siren.mapping_network.output_layer.weight"
    assert not torch.equal(raw["generator"][name], raw["generator_ema"][name])
    assert not torch.equal(raw["generator_ema"][name], raw["generator_ema2"][name])


# ------------------------------------------------------------------- nothing is run
class WritesMarker:
    """Unpickling this with plain pickle runs `touch <marker>`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_reduce_payload_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(WritesMarker(marker)))  # the payload is live ...
    assert marker.exists()
    marker.unlink()

    zipped = tmp_path / "generator.pth"  # ... in a torch zip beside real tensors
    torch.save({"weights": torch.zeros(3), "payload": WritesMarker(marker)}, zipped)
    with pytest.raises(PublishedCheckpointError, match=r"refusing to load global '(posix|os)\.system'"):
        read_published(zipped)
    plain = tmp_path / "plain.pth"  # ... and as a bare pickle
    plain.write_bytes(pickle.dumps(WritesMarker(marker)))
    with pytest.raises(PublishedCheckpointError, match="not a torch zip-format checkpoint"):
        read_published(plain)
    assert import_checkpoint.main(["--generator", str(zipped), "--curriculum", "FFHQ",
                                   "--output", str(tmp_path / "out.pth")]) == 2
    assert not marker.exists() and not (tmp_path / "out.pth").exists()


def rewrite_pickle(source: Path, target: Path, edit) -> None:
    """Copy a torch zip archive, passing its data.pkl through `edit(bytes) -> bytes`."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = src.read(info)
            dst.writestr(info, edit(data) if info.filename.endswith("data.pkl") else data)


def test_a_global_injected_into_the_published_file_is_refused(tmp_path):
    marker = tmp_path / "ran"
    # After PROTO 2: GLOBAL posix.system, MARK, the command, TUPLE, REDUCE, POP; then the
    # untouched published stream. A plain unpickler would run the command and load on.
    payload = b"cposix\nsystem\n(X" + len(f"touch {marker}").to_bytes(4, "little") + \
        f"touch {marker}".encode() + b"tR0"
    injected = tmp_path / "generator.pth"
    rewrite_pickle(FIXTURE / "generator.pth", injected, lambda data: data[:2] + payload + data[2:])
    with pytest.raises(PublishedCheckpointError, match="posix.system"):
        read_published(injected)
    assert not marker.exists()


def test_calling_a_module_class_is_refused(tmp_path):
    archive = tmp_path / "generator.pth"
    with zipfile.ZipFile(archive, "w") as zipped:
        # GLOBAL of a published class path, empty args, REDUCE: a call, not a rebuild.
        zipped.writestr("generator/data.pkl", b"\x80\x02cgenerators.generators\nImplicitGenerator3d\n)R.")
    with pytest.raises(PublishedCheckpointError, match="refusing to call generators.generators.ImplicitGenerator3d"):
        read_published(archive)


def test_our_module_paths_stay_records():
    """`siren.siren` and `generators.generators` are our paths too: they must not become our classes."""
    published = read_published(FIXTURE / "generator.pth")
    assert isinstance(published, Record) and published.class_path == "generators.generators.ImplicitGenerator3d"
    siren = published.modules["siren"]
    assert isinstance(siren, Record) and not isinstance(siren, nn.Module)
    assert siren.class_path == "siren.siren.SPATIALSIRENBASELINE"


def test_storages_saved_on_a_gpu_load_on_the_cpu(tmp_path):
    # The EMA's storages name their location once ('cpu', memoised); make it 'cuda:0'.
    on_gpu = tmp_path / "ema.pth"
    rewrite_pickle(FIXTURE / "ema.pth", on_gpu,
                   lambda data: data.replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0", 1))
    original, moved = read_published(FIXTURE / "ema.pth"), read_published(on_gpu)
    assert len(moved.attribute("shadow_params")) == 88
    for a, b in zip(original.attribute("shadow_params"), moved.attribute("shadow_params")):
        assert b.device.type == "cpu" and torch.equal(a, b)


# ------------------------------------------------------------------------ clear errors
def save_pigan_generator(path: Path, monkeypatch) -> None:
    """A pi-GAN generator as its code pickles one: `generators.generators.ImplicitGenerator3d`
    holding a `siren.siren.SPATIALSIRENBASELINE`, and no 2D decoder."""
    class ImplicitGenerator3d(nn.Module):
        def __init__(self):
            super().__init__()
            self.siren = SPATIALSIRENBASELINE(hidden_dim=16)
            self.step = 7

    ImplicitGenerator3d.__module__, ImplicitGenerator3d.__qualname__ = "generators.generators", "ImplicitGenerator3d"
    pigan_module = types.ModuleType("generators.generators")
    pigan_module.ImplicitGenerator3d = ImplicitGenerator3d
    with monkeypatch.context() as patch:  # pickle finds classes by path: only while saving
        patch.setitem(sys.modules, "generators.generators", pigan_module)
        torch.save(ImplicitGenerator3d(), path)


def test_a_pigan_generator_is_named_as_such(tmp_path, monkeypatch, capsys):
    save_pigan_generator(tmp_path / "generator.pth", monkeypatch)
    assert import_checkpoint.main(["--path", str(tmp_path), "--curriculum", "FFHQ",
                                   "--output", str(tmp_path / "out.pth")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "pi-GAN" in err[0] and "no 2D decoder" in err[0]


def test_missing_ema_files_fall_back_to_the_raw_weights(tmp_path, caplog):
    shutil.copy(FIXTURE / "generator.pth", tmp_path / "generator.pth")
    with caplog.at_level(logging.WARNING, logger="mvcgan.import"):
        state = import_published(find_published_files(tmp_path / "generator.pth"), "FFHQ")
    assert "no ema file" in caplog.text and "no ema2 file" in caplog.text
    for key in ("generator_ema", "generator_ema2"):
        assert all(torch.equal(state[key][k], v) for k, v in state["generator"].items())
    assert "discriminator" not in state


def test_our_own_checkpoint_needs_no_import(tmp_path, tiny_checkpoint, capsys):
    for path in (tiny_checkpoint, tiny_checkpoint.parent):
        assert import_checkpoint.main(["--path", str(path), "--curriculum", "FFHQ",
                                       "--output", str(tmp_path / "out.pth")]) == 2
        assert "needs no import" in capsys.readouterr().err


def test_usage_errors_exit_2(tmp_path, capsys):
    out = ["--curriculum", "FFHQ", "--output", str(tmp_path / "out.pth")]
    with pytest.raises(SystemExit) as exit_info:
        import_checkpoint.main(out)  # neither --path nor --generator
    assert exit_info.value.code == 2
    assert import_checkpoint.main(["--path", str(tmp_path / "missing"), *out]) == 2
    assert import_checkpoint.main(["--path", str(FIXTURE), "--ema", str(FIXTURE / "discriminator.pth"), *out]) == 2
    err = capsys.readouterr().err
    assert "not found" in err and "not a torch_ema ExponentialMovingAverage" in err
    assert not (tmp_path / "out.pth").exists()


def test_every_flag_has_help():
    for action in import_checkpoint.build_parser()._actions:
        assert action.help, action.option_strings


# ------------------------------------------------------------------- the scripts take it
@pytest.mark.slow
def test_render_and_shape_scripts_run_on_the_import(imported, tmp_path):
    import extract_shapes
    import render_multiview_image

    # The fixture's step lies in the 64 -> 64 px stage: no decoder block trained, so no upsampling.
    small = ["--image_size", "8", "--output_size", "8", "--num_steps", "4", "--device", "cpu", "--seeds", "0"]
    assert render_multiview_image.main(["--path", str(imported), "--output_dir", str(tmp_path / "render"),
                                        "--curriculum", "FFHQ", "--depth", *small]) == 0
    assert {p.name for p in (tmp_path / "render").iterdir()} == {"image_0.png", "depth_0.png"}
    assert extract_shapes.main(["--path", str(imported), "--output_dir", str(tmp_path / "shapes"), "--seeds", "0",
                                "--voxel_resolution", "16", "--level", "0.05", "--device", "cpu"]) == 0  # inside this field's range
    assert (tmp_path / "shapes" / "shape_0.ply").is_file()


@pytest.mark.slow
def test_fine_tuning_continues_from_the_published_step(imported, tmp_path, monkeypatch, caplog):
    """`main.py --load_dir` on the import: two steps of a tiny stage (4 px NeRF) at the published widths."""
    import main

    curriculum = curriculums.get_curriculum("Synthetic")  # procedural data, no download
    for key in [k for k in curriculum if isinstance(k, int)]:
        del curriculum[key]
    curriculum.update({0: dict(batch_size=2, num_steps=2, img_size=4, output_size=8, batch_split=1, gen_lr=2e-5,
                               disc_lr=8e-5, pos_lambda=15, reproj_lambda=1),
                       PUBLISHED_STEP + 2: {},
                       "hidden_dim": 256, "decoder_channels": (256, 256, 128, 64), "disc_width_factor": 1.0,
                       "synthetic_size": 8})
    monkeypatch.setitem(curriculums.CURRICULA, "PublishedWidths", curriculum)
    run = tmp_path / "finetune"
    with caplog.at_level(logging.INFO, logger="mvcgan.train"):
        assert main.main(["--curriculum", "PublishedWidths", "--output_dir", str(run), "--load_dir", str(imported),
                          "--device", "cpu", "--num_workers", "0", "--sample_interval", "0", "--no_progress",
                          "--allow_curriculum_change"]) == 0  # FFHQ weights, another curriculum's data
    assert "fresh Adam moments" in caplog.text and f"from step {PUBLISHED_STEP}" in caplog.text
    state = load_checkpoint(run / "checkpoint.pth")
    assert state["step"] == PUBLISHED_STEP + 2 and state["optimizer_G"]["state"]
    assert state["ema_num_updates"] == [PUBLISHED_STEP + 2] * 2


def test_an_existing_output_is_replaced_only_with_force(tmp_path, capsys):
    """Issue 32: a trained run's checkpoint.pth named as --output was replaced without a word."""
    target = tmp_path / "run" / "checkpoint.pth"
    target.parent.mkdir()
    target.write_bytes(b"a trained run's checkpoint")
    args = ["--path", str(FIXTURE), "--curriculum", "FFHQ", "--output", str(target)]
    assert import_checkpoint.main(args) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and f"--output {target} exists; pass --force" in err
    assert target.read_bytes() == b"a trained run's checkpoint"
    assert import_checkpoint.main([*args, "--force"]) == 0
    assert load_checkpoint(target)["step"] == PUBLISHED_STEP


def test_the_output_is_never_one_of_the_inputs(tmp_path, capsys):
    """Issue 32: --output pub/generator.pth overwrote the import's own input (--force does not allow it)."""
    published = tmp_path / "pub"
    shutil.copytree(FIXTURE, published)
    before = {path.name: path.read_bytes() for path in published.iterdir() if path.is_file()}
    for name in ("generator.pth", "ema.pth", "ema2.pth", "discriminator.pth"):
        output = published / name
        assert import_checkpoint.main(["--path", str(published), "--curriculum", "FFHQ", "--output", str(output),
                                       "--force"]) == 2
        err = capsys.readouterr().err
        assert err.count("error:") == 1 and f"--output {output} is " in err
    assert import_checkpoint.main(["--path", str(published), "--curriculum", "FFHQ", "--output",
                                   str(published)]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert {path.name: path.read_bytes() for path in published.iterdir() if path.is_file()} == before


def test_published_weights_that_are_not_finite_are_refused(tmp_path, capsys, monkeypatch):
    real_import = import_checkpoint.import_published

    def with_nan(files, curriculum):
        state = real_import(files, curriculum)
        name = next(iter(state["generator_ema"]))
        state["generator_ema"][name] = torch.full_like(state["generator_ema"][name], float("nan"))
        return state

    monkeypatch.setattr(import_checkpoint, "import_published", with_nan)
    output = tmp_path / "out.pth"
    assert import_checkpoint.main(["--path", str(FIXTURE), "--curriculum", "FFHQ", "--output", str(output)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {FIXTURE / 'ema.pth'}: its weights hold NaN or infinite")
    assert not output.exists()
