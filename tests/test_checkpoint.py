"""Checkpoint files (utils/checkpoint.py): atomic writes, weights_only loading, the checksum that catches
corruption, older formats, random streams; errors in words."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from utils.checkpoint import FORMAT_VERSION, CheckpointError, load_checkpoint, load_generator, save_checkpoint


# ------------------------------------- writing: atomic, one line when it fails, no temp files left
def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pth"
    save_checkpoint(path, {"generator": {"w": torch.ones(2)}, "curriculum": {}, "step": 1})

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        save_checkpoint(path, {"generator": {"w": torch.zeros(2)}, "curriculum": {}, "step": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert os.listdir(tmp_path) == ["checkpoint.pth"]  # no temp file left behind


def test_a_failed_write_says_why_in_one_line_and_keeps_the_old_file(tmp_path, monkeypatch):
    """torch's zip writer turns a full disk into "unexpected pos ..." raised while handling the OSError."""
    import errno

    from utils.checkpoint import CheckpointWriteError

    path = tmp_path / "checkpoint.pth"
    save_checkpoint(path, {"generator": {"w": torch.ones(2)}, "curriculum": {}, "step": 1})

    def full_disk(obj, f, *args, **kwargs):
        f.write(b"partial")
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 960 vs 854")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointWriteError) as caught:
        save_checkpoint(path, {"generator": {"w": torch.zeros(2)}, "curriculum": {}, "step": 2})
    monkeypatch.undo()
    message = str(caught.value)
    assert "No space left on device" in message and "unexpected pos" not in message and "\n" not in message
    assert isinstance(caught.value, OSError)
    assert load_checkpoint(path)["step"] == 1 and os.listdir(tmp_path) == ["checkpoint.pth"]


def test_stale_temp_files_are_removed_and_nothing_else(tmp_path):
    from utils.checkpoint import remove_stale_temp_files

    stale = [tmp_path / ".checkpoint.pth.a1b2c3.tmp", tmp_path / ".checkpoint_000200.pth.x_9.tmp"]
    kept = [tmp_path / "checkpoint.pth", tmp_path / ".other.tmp", tmp_path / "notes.tmp",
            tmp_path / ".checkpoint.pth.keep"]
    for path in stale + kept:
        path.write_bytes(b"x")
    assert sorted(remove_stale_temp_files(tmp_path)) == sorted(stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in kept)


# ----------------------------- reading safely: weights_only, unreadable files and pickles in words
def test_truncated_and_pickled_module_checkpoints_are_rejected(tmp_path):
    good = tmp_path / "good.pth"
    save_checkpoint(good, {"generator": {"w": torch.ones(1000)}, "curriculum": {}, "step": 0})
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="not a readable"):
        load_checkpoint(truncated)
    pickled = tmp_path / "module.pth"
    torch.save(torch.nn.Linear(2, 2), pickled)  # what the published code wrote
    with pytest.raises(CheckpointError, match="not an MVCGAN checkpoint") as caught:
        load_checkpoint(pickled)
    assert "weights_only" not in str(caught.value)  # never advise loading it unsafely
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match="no checkpoint.pth"):
        load_checkpoint(tmp_path)


def test_a_torch_with_the_weights_only_bypass_is_refused(tmp_path, monkeypatch):
    """torch <= 2.5.1 runs code from a crafted file even with weights_only=True (CVE-2025-32434):
    requirements.txt excludes it, and loading refuses it where it is installed anyway."""
    import re

    text = (Path(__file__).resolve().parents[1] / "requirements.txt").read_text()
    minimum = re.search(r"^torch(?:>=|==)(\d+)\.(\d+)", text, re.M)  # the lowest torch it allows
    assert minimum and tuple(map(int, minimum.groups())) >= (2, 6)
    vision = re.search(r"^torchvision(?:>=|==)0\.(\d+)", text, re.M)
    assert vision and int(vision.group(1)) >= 21  # the release that goes with torch 2.6
    path = tmp_path / "checkpoint.pth"
    save_checkpoint(path, {"generator": {"w": torch.ones(2)}, "curriculum": {}, "step": 1})
    monkeypatch.setattr(torch, "__version__", "2.5.1+cpu")
    with pytest.raises(CheckpointError, match=r"torch 2.5.1\+cpu can run code .*CVE-2025-32434.*torch >= 2.6"):
        load_checkpoint(path)


# -------------------- the checksum: corruption is caught, never taken for an old or a foreign file
def test_flipped_bytes_in_tensor_data_are_detected(tmp_path):
    path = tmp_path / "checkpoint.pth"
    weights = torch.arange(4096, dtype=torch.float32) + 0.5
    save_checkpoint(path, {"generator": {"w": weights}, "curriculum": {"a": 1}, "step": 3})
    assert load_checkpoint(path)["step"] == 3
    data = bytearray(path.read_bytes())
    start = bytes(data).find(weights.numpy().tobytes())
    assert start > 0  # the tensor's bytes are stored as they are
    for i in range(start + 4000, start + 4100):  # 100 bytes inside the tensor data
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupted"):
        load_checkpoint(path)


def test_checkpoints_without_a_checksum_still_load_and_resave_gets_a_fresh_one(tmp_path):
    old = tmp_path / "old.pth"
    torch.save({"format_version": 2, "generator": {"w": torch.ones(3)}, "curriculum": {}, "step": 5}, old)
    state = load_checkpoint(old)
    assert state["step"] == 5 and "checksum" not in state
    state["step"] = 6  # a changed state saved again must verify against its new contents
    save_checkpoint(tmp_path / "new.pth", state)
    assert load_checkpoint(tmp_path / "new.pth")["step"] == 6


def _pickle_section(path):
    """(bytes of the file, offset and length of its data.pkl record: the pickle torch.save wrote)."""
    import zipfile

    data = path.read_bytes()
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith("data.pkl"))
    header = info.header_offset  # the local header: 30 bytes, then the name and its own extra field
    name_length, extra_length = (int.from_bytes(data[header + i:header + i + 2], "little") for i in (26, 28))
    start = header + 30 + name_length + extra_length
    assert data[start:start + 2] == b"\x80\x02"  # the pickle's first opcode: PROTO 2
    return bytearray(data), start, info.file_size


def _replace_once(data: bytearray, old: bytes, new: bytes) -> bytearray:
    assert len(old) == len(new) and data.count(old) == 1
    start = data.index(old)
    data[start:start + len(old)] = new
    return data


def test_a_damaged_checksum_never_turns_verification_off(tmp_path):
    """Changing the checksum's tag, its key or its digest and a weight used to pass as a pre-checksum file
    (and train or render with the altered weight); only a file of an older format may lack a checksum."""
    path = tmp_path / "checkpoint.pth"
    weights = torch.arange(64, dtype=torch.float32) + 0.5
    save_checkpoint(path, {"generator": {"w": weights}, "curriculum": {"a": 1}, "step": 3})
    original = bytearray(path.read_bytes())
    weight_byte = bytes(original).find(weights.numpy().tobytes()) + 40
    for old, new in ((b"sha256-state-v1", b"sha256-state-v2"), (b"checksum", b"checksuM"),
                     (b"algorithm", b"algorithM"), (b"digest", b"digesT")):
        damaged = _replace_once(bytearray(original), old, new)
        damaged[weight_byte] ^= 0x01
        (tmp_path / "damaged.pth").write_bytes(bytes(damaged))
        with pytest.raises(CheckpointError, match="is corrupted: its checksum entry is damaged|do not match"):
            load_checkpoint(tmp_path / "damaged.pth")
    # A file of the current format without any checksum is corrupt, not old.
    torch.save({"format_version": FORMAT_VERSION, "generator": {"w": weights}, "curriculum": {}, "step": 3},
               tmp_path / "stripped.pth")
    with pytest.raises(CheckpointError, match=f"a checkpoint of format {FORMAT_VERSION} carries a checksum"):
        load_checkpoint(tmp_path / "stripped.pth")


def test_no_flipped_byte_in_the_pickle_loads_with_an_altered_weight(tmp_path):
    """Every byte of the pickle section flipped in turn, together with a byte of a weight: each file is
    refused. The flips that break the pickle are reported as corruption, never as a foreign pickle to
    convert with import_checkpoint.py."""
    path = tmp_path / "checkpoint.pth"
    weights = torch.arange(16, dtype=torch.float32) + 0.5
    save_checkpoint(path, {"generator": {"w": weights}, "curriculum": {"dataset": "x"}, "step": 3})
    original, start, length = _pickle_section(path)
    weight_byte = bytes(original).find(weights.numpy().tobytes()) + 8
    flipped = tmp_path / "flipped.pth"
    loaded, foreign = [], []
    for offset in range(start, start + length):
        data = bytearray(original)
        data[offset] ^= 0x10
        data[weight_byte] ^= 0x01
        flipped.write_bytes(bytes(data))
        try:
            load_checkpoint(flipped)
            loaded.append(offset - start)
        except CheckpointError as error:
            if "import_checkpoint.py" in str(error) or "pickled Python objects" in str(error):
                foreign.append((offset - start, str(error)))
    assert not loaded, loaded
    assert not foreign, foreign[:3]


def test_a_flipped_byte_in_a_pickled_name_is_corruption_not_a_foreign_pickle(tmp_path):
    path = tmp_path / "checkpoint.pth"
    save_checkpoint(path, {"generator": {"w": torch.ones(4)}, "curriculum": {}, "step": 3})
    damaged = _replace_once(bytearray(path.read_bytes()), b"torch._utils", b"torch>_utils")
    path.write_bytes(bytes(damaged))
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    message = str(caught.value)
    assert "is corrupted: its record" in message and "CRC-32" in message
    assert "import_checkpoint.py" not in message and "weights_only" not in message


# ---------------------------------------------------------------- older formats and load_generator
def test_load_generator_uses_ema_weights_by_default(tiny_checkpoint, tiny_curriculum, tmp_path):
    state = load_checkpoint(tiny_checkpoint)
    ema = {k: v + 1 for k, v in state["generator"].items()}
    path = tmp_path / "ckpt.pth"
    save_checkpoint(path, {**state, "generator_ema": ema})
    generator, curriculum, step = load_generator(path)
    assert torch.equal(generator.state_dict()["decoder.to_rgb.0.weight"], ema["decoder.to_rgb.0.weight"])
    raw, _, _ = load_generator(path, use_ema=False)
    assert torch.equal(raw.state_dict()["decoder.to_rgb.0.weight"], state["generator"]["decoder.to_rgb.0.weight"])
    assert curriculum["dataset"] == "Synthetic" and step == 0


def test_format1_checkpoint_converts_equalized_biases(tiny_generator, tiny_curriculum, tmp_path):
    """Format 1 stored b' = c * b (a 'c W x + b' layer); loading converts it so the forward is unchanged,
    and Adam's moments for those biases follow (m * c, v * c^2)."""
    from utils.checkpoint import equalized_bias_scales

    state = {k: v.clone() for k, v in tiny_generator.state_dict().items()}
    scales = equalized_bias_scales(state)
    assert len(scales) == 2 * 4 + 1 + 5  # base conv, two per block, five to_rgb
    with torch.no_grad():
        for key in scales:
            state[key].normal_()
    old = {k: (v * scales[k] if k in scales else v) for k, v in state.items()}
    names = list(old)
    bias_index = names.index(next(iter(scales)))
    optimizer_G = {"state": {bias_index: {"step": torch.tensor(3.0), "exp_avg": torch.ones(3),
                                          "exp_avg_sq": torch.ones(3)}},
                   "param_groups": [{"name": "generator", "params": list(range(len(names)))}]}
    path = tmp_path / "old.pth"
    torch.save({"format_version": 1, "generator": old, "generator_ema": old, "curriculum": tiny_curriculum,
                "step": 0, "optimizer_G": optimizer_G}, path)
    loaded = load_checkpoint(path)
    assert loaded["format_version"] == FORMAT_VERSION and loaded["upgraded_from_format"] == 1
    for key in state:
        torch.testing.assert_close(loaded["generator_ema"][key], state[key])
    c = scales[names[bias_index]]
    moments = loaded["optimizer_G"]["state"][bias_index]
    torch.testing.assert_close(moments["exp_avg"], torch.full((3,), c))
    torch.testing.assert_close(moments["exp_avg_sq"], torch.full((3,), c * c))
    torch.save({"format_version": 99, "generator": old, "curriculum": tiny_curriculum}, path)
    with pytest.raises(CheckpointError, match="newer"):
        load_checkpoint(path)


# ---------------------------------------------------------------------------------- random streams
def test_cuda_rng_states_of_more_gpus_than_this_machine_has_restore_the_ones_it_has(monkeypatch):
    """A checkpoint from a process that saw 8 GPUs, resumed where 1 is visible: GPU 0's state is restored
    and the others are left out (torch.cuda.set_rng_state_all would fail on GPU 1)."""
    from utils.checkpoint import rng_state, set_rng_state

    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [torch.full((4,), i, dtype=torch.uint8)
                                                                 for i in range(8)])
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.append((device, state[0].item())))
    state = rng_state()
    assert len(state["cuda"]) == 8
    set_rng_state(state)
    assert restored == [(0, 0)]
