"""dataset_tool.py: a prepared set trains on exactly the raw images' tensors; it checks, reports, resumes
and refuses bad input; main.py checks a prepared set's dataset.json against the curriculum."""
from __future__ import annotations

import errno
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import dataset_tool
import datasets
from curriculums import with_defaults
from datasets import DatasetError, build_dataset, check_dataset

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "published_data"
PUBLISHED = ("img_a", "img_b", "img_c")


def _odd_images(folder: Path) -> dict:
    """Small images of every kind datasets.IMAGE_RULES names (enlarged by the faces' resize: slow at full size
    only), {file: kinds}."""
    rng = np.random.default_rng(5)
    smooth = (np.indices((60, 90)).sum(0) * 2 % 256).astype(np.uint8)
    colour = np.stack([smooth, smooth[::-1], rng.integers(0, 256, (60, 90)).astype(np.uint8)], -1)
    Image.fromarray(colour).save(folder / "photo.jpg", quality=90)
    Image.fromarray(smooth).save(folder / "grey.png")
    Image.fromarray(smooth.astype(np.uint16) * 200).save(folder / "deep.png")
    Image.fromarray(colour).convert("CMYK").save(folder / "cmyk.jpg")
    rgba = np.concatenate([colour, np.full((60, 90, 1), 255, np.uint8)], -1)
    rgba[:20, :, 3] = 0
    Image.fromarray(rgba, "RGBA").save(folder / "alpha.png")
    exif = Image.Exif()
    exif[0x0112] = 8
    Image.fromarray(colour).save(folder / "turned.jpg", exif=exif.tobytes(), quality=90)
    Image.fromarray(colour).save(folder / "pic.webp", lossless=True)
    Image.fromarray(colour[:1, :1]).save(folder / "tiny.png")
    good = (folder / "grey.png").read_bytes()
    (folder / "cut.png").write_bytes(good[: len(good) // 2])
    (folder / "text.jpg").write_bytes(b"not a picture")
    return {"photo.jpg": [], "grey.png": ["grey"], "deep.png": ["grey", "16-bit"], "cmyk.jpg": ["CMYK"],
            "alpha.png": ["alpha"], "turned.jpg": ["EXIF-rotated"], "pic.webp": [], "tiny.png": ["too small"],
            "cut.png": ["truncated"], "text.jpg": ["unreadable"]}


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    """The published fixture's three images and the odd ones, in a folder with a subfolder."""
    folder = tmp_path_factory.mktemp("raw")
    for name in PUBLISHED:
        shutil.copy(FIXTURE / f"{name}.png", folder / f"{name}.png")
    (folder / "odd").mkdir()
    _odd_images(folder / "odd")
    return folder


@pytest.fixture(scope="module")
def prepared(raw, tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("out") / "faces.zip"
    assert dataset_tool.main(["--source", str(raw), "--dest", str(dest), "--curriculum", "FFHQ", "--no_progress"]) == 0
    return dest


def _meta(dataset, path, **extra):
    return with_defaults({"dataset": dataset, "dataset_path": str(path), **extra})


def _kept_raw(raw: Path) -> list:
    """The raw files the tool keeps, in the prepared set's order (the loader's sorted order)."""
    return [p for p in sorted(str(p) for p in raw.rglob("*") if p.is_file())
            if not datasets.read_image(p).skipped]


def test_the_prepared_set_gives_the_raw_images_tensors_bit_for_bit(raw, prepared):
    """Every kept image, at every stage size, flipped or not, as training reads it (keys (index, flip)),
    equals what the loader makes of the raw file; and the published fixture's tensors themselves."""
    kept = _kept_raw(raw)
    expected = torch.load(FIXTURE / "expected.pt", weights_only=True)["outputs"]
    for size in (64, 128, 512):
        from_zip = build_dataset(_meta("FFHQ", prepared), size, flip=False)
        assert isinstance(from_zip, datasets.PreparedDataset) and len(from_zip) == len(kept) == 10
        for index, path in enumerate(kept):
            one_raw = datasets.FFHQ(path, size)
            for flip in (False, True):
                assert torch.equal(from_zip[(index, flip)][0], one_raw[(0, flip)][0]), (path, size, flip)
            name = Path(path).stem
            if name in PUBLISHED and size < 512:
                assert torch.equal(from_zip[(index, False)][0], expected["FFHQ"][name][str(size)])
        assert from_zip.num_skipped == 0
    # CelebAHQ's crop is FFHQ's: the same set trains it
    assert torch.equal(build_dataset(_meta("CelebAHQ", prepared), 64, flip=False)[(0, False)][0],
                       expected["CelebAHQ"]["img_a"]["64"])


def test_cat_npy_folder_destination_from_a_zip_source_with_workers_and_antialias(raw, tmp_path):
    """Another crop (Cat, 472, padded where smaller), a zip source, uncompressed arrays in a folder destination,
    2 processes, and the antialiased resize correction: still the raw tensors."""
    source = tmp_path / "cats.zip"
    with zipfile.ZipFile(source, "w") as archive:
        for path in sorted(raw.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(raw).as_posix())
    dest = tmp_path / "cats"
    assert dataset_tool.main(["--source", str(source), "--dest", str(dest), "--crop", "Cat", "--workers", "2",
                              "--format", "npy", "--no_progress"]) == 0
    info = json.loads((dest / "dataset.json").read_text())
    assert info["dataset"] == "Cat" and info["crop"] == {"short_side": None, "crop": 472} and info["size"] == 472
    assert info["curriculum"] is None and info["count"] == 10
    from_folder = build_dataset(_meta("Cat", dest, real_resize="antialias"), 64, flip=False)
    nearest = build_dataset(_meta("Cat", dest), 128, flip=False)
    for index, path in enumerate(_kept_raw(raw)):
        assert torch.equal(from_folder[(index, True)][0],
                           datasets.Cat(path, 64, real_resize="antialias")[(0, True)][0]), path
        for flip in (False, True):
            assert torch.equal(nearest[(index, flip)][0], datasets.Cat(path, 128)[(0, flip)][0]), path
    assert info["image_format"] == "npy" and not list(dest.rglob("*.png"))
    array = np.load(dest / "00000" / "img00000000.npy")
    assert array.shape == (472, 472, 3) and array.dtype == np.uint8


def test_dataset_json_counts_and_the_report_list(raw, prepared):
    with zipfile.ZipFile(prepared) as archive:
        info = json.loads(archive.read("dataset.json"))
        pngs = [n for n in archive.namelist() if n.endswith(".png")]
    assert info["transform_version"] == datasets.TRANSFORM_VERSION and info["curriculum"] == "FFHQ"
    assert info["crop"] == {"short_side": 576, "crop": 512} and info["size"] == 512
    assert info["count"] == len(pngs) == 10 and info["sources"] == 13
    assert info["skipped"] == {"too small": 1, "truncated": 1, "unreadable": 1}
    assert info["converted"] == {"16-bit": 1, "CMYK": 1, "EXIF-rotated": 1, "alpha": 1, "grey": 2,
                                 "smaller than the crop": 8}  # img_c is 481 px high
    lines = prepared.with_name("faces.zip.report.tsv").read_text().splitlines()
    rows = {(line.split("\t")[0], line.split("\t")[1]): line for line in lines[1:]}
    assert ("odd/tiny.png", "too small") in rows and "1x1 pixels" in rows[("odd/tiny.png", "too small")]
    assert rows[("odd/cut.png", "truncated")].split("\t")[2].startswith("skipped")
    assert rows[("odd/alpha.png", "alpha")].split("\t")[2] == datasets.IMAGE_RULES["alpha"]
    assert not prepared.with_name("faces.zip.partial").exists()


def test_an_interrupted_run_finishes_without_redoing_work(raw, tmp_path, monkeypatch, capsys):
    dest = tmp_path / "set.zip"
    argv = ["--source", str(raw), "--dest", str(dest), "--curriculum", "CelebAHQ", "--no_progress"]
    calls = []
    real = dataset_tool.prepare_one

    def interrupted_after_five(index, *args):
        if len(calls) == 5:
            raise KeyboardInterrupt
        calls.append(index)
        return real(index, *args)

    monkeypatch.setattr(dataset_tool, "prepare_one", interrupted_after_five)
    assert dataset_tool.main(argv) == 130 and not dest.exists()
    assert "run the same command again" in capsys.readouterr().err
    first = list(calls)
    calls.clear()
    monkeypatch.setattr(dataset_tool, "prepare_one", lambda index, *args: (calls.append(index), real(index, *args))[1])
    assert dataset_tool.main(argv) == 0
    assert "5 of 13 images done earlier" in capsys.readouterr().err
    assert sorted(first + calls) == list(range(13)) and not set(first) & set(calls)
    with zipfile.ZipFile(dest) as archive:
        assert len([n for n in archive.namelist() if n.endswith(".png")]) == 10
    # the same command once more: the destination exists and is not overwritten
    before = dest.read_bytes()
    assert dataset_tool.main(argv) == 2
    assert "already exists" in capsys.readouterr().err and dest.read_bytes() == before


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_bad_input_is_one_error_line_and_exit_2(raw, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images")
    fake_zip = tmp_path / "fake.zip"
    fake_zip.write_bytes(b"not a zip")
    cases = [
        (["--source", str(empty), "--dest", str(tmp_path / "a.zip")], "no image"),
        (["--source", str(tmp_path / "none" / "*.png"), "--dest", str(tmp_path / "a.zip")], "no image"),
        (["--source", str(raw), "--dest", str(raw / "odd" / "out.zip")], "inside the source folder"),
        (["--source", str(raw / "*.png"), "--dest", str(raw / "out")], "inside the source folder"),
        (["--source", str(fake_zip), "--dest", str(tmp_path / "a.zip")], "not a zip file"),
        (["--source", str(raw), "--dest", str(fake_zip)], "already exists"),
        (["--source", str(raw), "--dest", str(tmp_path / "a.zip"), "--size", "600"], "--size"),
    ]
    for argv, message in cases:
        assert dataset_tool.main(argv + ["--curriculum", "FFHQ", "--no_progress"]) == 2, argv
        assert message in _error_line(capsys), argv
    assert dataset_tool.main(["--source", str(raw), "--dest", str(tmp_path / "s.zip"), "--curriculum",
                              "Synthetic"]) == 2
    assert "no images to prepare" in _error_line(capsys)
    assert not list(tmp_path.glob("*.partial"))


def test_a_full_disk_is_one_error_line_and_the_rerun_finishes(raw, tmp_path, monkeypatch, capsys):
    dest = tmp_path / "set"
    argv = ["--source", str(raw / "*.png"), "--dest", str(dest), "--curriculum", "FFHQ", "--no_progress"]
    save = Image.Image.save
    writes = []

    def disk_fills_up(self, fp, *args, **kwargs):
        if len(writes) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(fp))
        writes.append(fp)
        return save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", disk_fills_up)
    assert dataset_tool.main(argv) == 2
    line = _error_line(capsys)
    assert "No space left on device" in line and "run the same command again" in line
    assert not list(dest.parent.glob("set.partial/images/*/*.tmp"))  # no half-written image left
    monkeypatch.setattr(Image.Image, "save", save)
    assert dataset_tool.main(argv) == 0 and len(list(dest.rglob("*.png"))) == 3


# ------------------------------------------------------------------------------------ training from it
def test_main_refuses_a_prepared_set_that_does_not_fit_before_any_process(raw, prepared, tmp_path, capsys):
    import main

    small = tmp_path / "small64.zip"
    assert dataset_tool.main(["--source", str(raw / "*.png"), "--dest", str(small), "--crop", "FFHQ", "--size", "64",
                              "--no_progress"]) == 0
    common = ["--output_dir", str(tmp_path / "run"), "--device", "cpu", "--eval_freq", "0", "--set", "batch_size=2",
              "--set", "batch_split=1"]
    assert main.main(["--curriculum", "Cat", "--set", f"dataset_path={prepared}"] + common) == 2
    line = _error_line(capsys)
    assert "another crop" in line and "Cat" in line and "dataset_tool.py --curriculum Cat" in line
    assert main.main(["--curriculum", "FFHQ", "--set", f"dataset_path={small}"] + common) == 2
    assert "too small for stage 25000 (output_size 128)" in _error_line(capsys)
    # stopping before that stage, the small set is fine
    spec, _ = main.prepare_run(main.parse_args(["--curriculum", "FFHQ", "--set", f"dataset_path={small}",
                                                "--max_steps", "5"] + common), world_size=1)
    assert spec.curriculum["dataset_path"] == str(small)
    assert not (tmp_path / "run").exists()


def test_check_dataset_refuses_damaged_or_foreign_sets(prepared, tmp_path):
    meta = _meta("FFHQ", prepared)
    assert check_dataset(meta, output_sizes={0: 64, 100000: 512}) == 10
    not_zip = tmp_path / "bad.zip"
    not_zip.write_bytes(b"nope")
    with pytest.raises(DatasetError, match="not a zip file"):
        check_dataset(_meta("FFHQ", not_zip))
    plain = tmp_path / "plain.zip"
    with zipfile.ZipFile(plain, "w") as archive:
        archive.writestr("a.png", b"")
    with pytest.raises(DatasetError, match="no dataset.json"):
        check_dataset(_meta("FFHQ", plain))
    altered = tmp_path / "altered.zip"
    with zipfile.ZipFile(prepared) as source, zipfile.ZipFile(altered, "w") as archive:
        for name in source.namelist()[:-1]:  # an image lost
            data = source.read(name)
            if name == "dataset.json":
                data = json.dumps(dict(json.loads(data), transform_version=0)).encode()
            archive.writestr(name, data)
    with pytest.raises(DatasetError, match="holds 9 images but its dataset.json says 10"):
        check_dataset(_meta("FFHQ", altered))


def test_forked_loader_workers_each_open_the_zip(prepared):
    """The parent has read from the zip (its handle is open) before the workers fork: each worker opens its own,
    and the batches are the items read directly."""
    dataset = build_dataset(_meta("FFHQ", prepared), 32, flip=False)
    direct = torch.stack([dataset[(i, i % 2 == 1)][0] for i in range(len(dataset))])
    loader = torch.utils.data.DataLoader(dataset, batch_size=5, num_workers=2, multiprocessing_context="fork",
                                         sampler=[(i, i % 2 == 1) for i in range(len(dataset))])
    assert torch.equal(torch.cat([batch for batch, _ in loader]), direct)


def test_a_tiny_run_trains_from_the_prepared_zip(prepared, tmp_path, capsys):
    """main.py with --set dataset_path=set.zip: the checks pass, a step trains, real.png shows the crops."""
    import sys

    import main

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from fault_check import TINY_SETS, tiny_argv

    run = tmp_path / "run"
    assert main.main(tiny_argv(run, "--max_steps", "1", sets=TINY_SETS + ["dataset=FFHQ",
                                                                         f"dataset_path={prepared}"])) == 0, \
        capsys.readouterr().err
    assert (run / "checkpoint.pth").is_file() and (run / "real.png").is_file()
