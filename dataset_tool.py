"""Prepare a training set once: decode, check and crop every image, store the crops as lossless PNGs.

    python dataset_tool.py --source /data/ffhq/images1024x1024 --dest ffhq512.zip --curriculum FFHQ --workers 8
    python main.py --curriculum FFHQ --output_dir ffhq_exp --set dataset_path=ffhq512.zip

The source is a folder (searched recursively), a glob or a zip of images (`datasets.IMAGE_EXTENSIONS`);
the destination a `.zip` or a folder. For a curriculum (`--curriculum FFHQ`), or a dataset's crop and a
size (`--crop Cat --size 472`), every image is decoded and checked by `datasets.read_image` (the rules the
training loader applies: `datasets.IMAGE_RULES`), turned into the dataset's centre crop
(`datasets.center_crop`: CelebAHQ/FFHQ short side to 576 then 512, Cat 472) and stored as an 8-bit PNG
(or, `--format npy`, as an uncompressed uint8 array: twice the disk, nothing to decode when training).
The crop is what every stage of training reads (the random flip and the resize to the stage's size follow
it), so training from the prepared set gives the raw images' tensors bit for bit
(tests/test_dataset_tool.py). A `--size` below the crop stores the crop resized to that size by the
published nearest-neighbour resize: smaller and faster, for runs that stop at that size, but no longer
bit for bit (the flip comes before the resize in training). Beside the images, `dataset.json` records the
curriculum, crop, size, count and `datasets.TRANSFORM_VERSION`; `main.py` checks it against the curriculum
before any process starts.

Skipped and converted images are counted on the last line and listed, one per line with the reason, in
`<dest>.report.tsv`. The work goes into `<dest>.partial/` (each image written whole, then renamed, and
logged) and becomes the destination only at the end: an interrupted run (Ctrl-C, a kill, a full disk)
is finished by running the same command again, which redoes nothing done. An existing destination is never
overwritten. Bad input is one `error:` line and exit code 2. Entry point: `main(argv)`.
"""
from __future__ import annotations

import argparse
import errno
import glob
import hashlib
import io
import json
import multiprocessing
import os
import shutil
import sys
import time
import zipfile
from collections import Counter
from pathlib import Path
from typing import List, Optional, Sequence

from tqdm import tqdm

import curriculums
import numpy as np

from datasets import (CROP_SIZES, IMAGE_EXTENSIONS, IMAGE_RULES, PREPARED_FORMATS, PREPARED_INFO, TRANSFORM_VERSION,
                      center_crop, crop_spec, describe_crop, final_resize, read_image)
from utils.cli import USAGE_ERROR, HelpFormatter

PNG_COMPRESS_LEVEL = 1  # zlib level of the PNGs: 2-3x faster to write than 6, 15 % larger (docs/PERFORMANCE.md)
IMAGES_PER_FOLDER = 1000  # the destination holds 00000/img00000000.png ... (StyleGAN's layout)


class ToolError(Exception):
    """Bad input or a failed write: one `error:` line, exit code 2."""


# ------------------------------------------------------------------------------------------- sources
class Source:
    """The images to prepare: sorted names (paths relative to a folder, matches of a glob, members of a
    zip) and how to open one. Picklable: a worker process opens a zip source once, itself."""

    def __init__(self, text: str):
        self.text = text
        path = os.path.expanduser(text)
        self.kind, self.root = "glob", None
        if os.path.isdir(path):
            self.kind, self.root = "folder", os.path.abspath(path)
            names = [os.path.relpath(os.path.join(dirpath, f), self.root)
                     for dirpath, _dirs, files in os.walk(self.root) for f in files
                     if f.lower().endswith(IMAGE_EXTENSIONS)]
        elif os.path.isfile(path) and path.lower().endswith(".zip"):
            self.kind, self.root = "zip", os.path.abspath(path)
            if not zipfile.is_zipfile(path):
                raise ToolError(f"--source {text} is not a zip file")
            with zipfile.ZipFile(path) as archive:
                names = [n for n in archive.namelist() if n.lower().endswith(IMAGE_EXTENSIONS)
                         and not n.endswith("/") and not n.startswith("__MACOSX/")]
        else:
            names = [os.path.abspath(p) for p in glob.glob(path, recursive=True) if os.path.isfile(p)
                     and p.lower().endswith(IMAGE_EXTENSIONS)]
            self.root = _glob_base(path)
        if not names:
            raise ToolError(f"--source {text}: no image ({', '.join(IMAGE_EXTENSIONS)}) found there")
        self.names = sorted(names)
        self._zip = None

    def open(self, name: str):
        """A path or a binary file object for `datasets.read_image`."""
        if self.kind == "zip":
            if self._zip is None:
                self._zip = zipfile.ZipFile(self.root)
            return io.BytesIO(self._zip.read(name))
        return os.path.join(self.root, name) if self.kind == "folder" else name

    def __getstate__(self):
        return dict(self.__dict__, _zip=None)


def _glob_base(pattern: str) -> str:
    """The folder a glob searches: its leading components without a wildcard."""
    parts = Path(os.path.abspath(pattern)).parts
    base = []
    for part in parts:
        if glob.has_magic(part):
            break
        base.append(part)
    folder = Path(*base) if base else Path(".")
    return str(folder if folder.is_dir() else folder.parent)


# ------------------------------------------------------------------------------------------- the work
class Settings:
    """What every image goes through (picklable, for the worker processes)."""

    def __init__(self, dataset: str, size: int, staging: Path, image_format: str, compress_level: int):
        self.dataset, self.size, self.staging = dataset, size, staging
        self.image_format, self.compress_level = image_format, compress_level


_WORKER = {}  # per process: the Source and Settings (Pool initializer)


def _init_worker(source: Source, settings: Settings) -> None:
    _WORKER["source"], _WORKER["settings"] = source, settings


def image_name(index: int, image_format: str = "png") -> str:
    return f"{index // IMAGES_PER_FOLDER:05d}/img{index:08d}{PREPARED_FORMATS[image_format]}"


def prepare_one(index: int, name: str, source: Source, settings: Settings) -> dict:
    """Decode, check, crop and write one image; its record for the log and the report."""
    checked = read_image(source.open(name), settings.dataset)
    record = {"index": index, "source": name, "kinds": list(checked.kinds), "reason": checked.reason}
    if checked.skipped:
        return dict(record, name=None)
    crop = center_crop(checked.image, settings.dataset)
    if settings.size < crop.size[0]:  # the published nearest resize (datasets.final_resize), on the codes
        from torchvision.transforms import v2
        crop = v2.functional.to_pil_image(final_resize(settings.size)(v2.functional.pil_to_tensor(crop)))
    name = image_name(index, settings.image_format)
    target = settings.staging / "images" / name
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    try:
        if settings.image_format == "npy":
            with open(temporary, "wb") as f:
                np.save(f, np.asarray(crop), allow_pickle=False)  # (H, W, 3) uint8
        else:
            crop.save(temporary, format="PNG", compress_level=settings.compress_level)
        os.replace(temporary, target)
    finally:
        if temporary.exists():
            temporary.unlink()
    return dict(record, name=name)


def _prepare_in_worker(task) -> dict:
    index, name = task
    return prepare_one(index, name, _WORKER["source"], _WORKER["settings"])


# ------------------------------------------------------------------------------------------- the run
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    p.add_argument("--source", required=True, help="a folder (searched recursively), a glob ('/data/*.jpg') or a zip")
    p.add_argument("--dest", required=True, help="NAME.zip, or a folder; never overwritten")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--curriculum", help="prepare for this curriculum of curriculums.py: its dataset's crop")
    what.add_argument("--crop", choices=sorted(CROP_SIZES), help="prepare with this dataset's crop")
    p.add_argument("--size", type=int, default=None,
                   help="side of the stored images (default, and what is bit for bit: the crop's side, 512 for "
                        "faces, 472 for Cat); smaller: the crop resized by nearest neighbour, as training does")
    p.add_argument("--workers", type=int, default=1, help="worker processes that decode and write images")
    p.add_argument("--format", choices=sorted(PREPARED_FORMATS), default="png",
                   help="png: compressed 8-bit PNGs (0.4 MB per 512² crop); npy: uncompressed uint8 arrays (0.79 "
                        "MB), several times faster to load (docs/PERFORMANCE.md); both lossless")
    p.add_argument("--compress_level", type=int, default=PNG_COMPRESS_LEVEL, choices=range(10), metavar="0-9",
                   help="zlib level of the PNGs (0: uncompressed, 2x larger; 6: 15 %% smaller, 3x slower to write)")
    p.add_argument("--max_images", type=int, default=None, help="prepare only the first N source images (trials)")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def _dataset_and_curriculum(args) -> tuple:
    if args.crop:
        return args.crop, None
    try:
        curriculum = curriculums.get_curriculum(args.curriculum)
    except ValueError as error:
        raise ToolError(str(error)) from None
    dataset = curriculum["dataset"]
    if dataset not in CROP_SIZES:
        raise ToolError(f"curriculum {args.curriculum!r} trains on {dataset}, which has no images to prepare")
    return dataset, args.curriculum


def _is_inside(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def _check_destination(dest: Path, source: Source) -> None:
    if dest.exists():
        raise ToolError(f"--dest {dest} already exists and is never overwritten: remove it, or choose another --dest")
    if source.kind in ("folder", "glob") and _is_inside(dest, Path(source.root)):
        raise ToolError(f"--dest {dest} is inside the source folder {source.root}: the prepared images would be "
                        f"read as source images; put it elsewhere")
    if source.kind == "zip" and dest.resolve() == Path(source.root):
        raise ToolError(f"--dest {dest} is the source zip")
    parent = dest.resolve().parent
    existing = parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ToolError(f"--dest {dest}: cannot write in {existing}")


def _read_log(path: Path) -> dict:
    """{index: record} from the log of earlier runs (a line cut short by a kill is ignored)."""
    records = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
                records[int(record["index"])] = record
            except (ValueError, KeyError, TypeError):
                continue
    return records


def _start_or_resume(staging: Path, options: dict) -> bool:
    """Create the staging folder, or check that the one there is an unfinished run of these options."""
    recorded = staging / "options.json"
    if staging.exists():
        try:
            earlier = json.loads(recorded.read_text())
        except (OSError, ValueError):
            earlier = None
        if earlier != options:
            raise ToolError(f"{staging} holds an unfinished run with other options or other source images; run "
                            f"that command again to finish it, or remove {staging} to start afresh")
        return True
    staging.mkdir(parents=True)
    recorded.write_text(json.dumps(options, indent=1))
    return False


def _pack(staging: Path, dest: Path, info: dict, names: List[str]) -> None:
    """The staged images and dataset.json become `dest` in one rename (a zip is built beside them first)."""
    images = staging / "images"
    images.mkdir(exist_ok=True)
    if dest.suffix.lower() == ".zip":
        packing = staging / "packing.zip"
        with zipfile.ZipFile(packing, "w", compression=zipfile.ZIP_STORED) as archive:  # PNGs are compressed
            archive.writestr(PREPARED_INFO, json.dumps(info, indent=1))
            for name in names:
                archive.write(images / name, name)
        os.replace(packing, dest)
    else:
        (images / PREPARED_INFO).write_text(json.dumps(info, indent=1))
        os.replace(images, dest)


def _write_report(path: Path, records: List[dict]) -> None:
    with open(path, "w") as f:
        f.write("source\tkind\twhat happened\tdetail\n")
        for record in records:
            for kind in record["kinds"]:
                f.write(f"{record['source']}\t{kind}\t{IMAGE_RULES[kind]}\t{record['reason']}\n")


def prepare(args) -> str:
    """The whole job; the summary line. Raises ToolError (also for a failed write)."""
    started = time.perf_counter()
    dataset, curriculum = _dataset_and_curriculum(args)
    spec = crop_spec(dataset)
    size = args.size or spec["crop"]
    if not 1 <= size <= spec["crop"]:
        raise ToolError(f"--size must be between 1 and the crop's side, {spec['crop']} (got {size}): training "
                        f"enlarges the crop itself where a stage is larger")
    if args.workers < 1:
        raise ToolError(f"--workers must be at least 1 (got {args.workers})")
    source = Source(args.source)
    names = source.names[:args.max_images] if args.max_images else source.names
    dest = Path(args.dest).expanduser()
    _check_destination(dest, source)
    staging = dest.with_name(dest.name + ".partial")
    options = {"source": os.path.abspath(os.path.expanduser(args.source)), "sources": len(names),
               "sources_sha256": hashlib.sha256("\n".join(names).encode()).hexdigest(), "dataset": dataset,
               "crop": spec, "size": size, "image_format": args.format, "compress_level": args.compress_level,
               "transform_version": TRANSFORM_VERSION}
    try:
        resumed = _start_or_resume(staging, options)
        log_path = staging / "log.jsonl"
        records = _read_log(log_path)
        images = staging / "images"
        done = {i for i, r in records.items() if r["name"] is None or (images / r["name"]).is_file()}
        todo = [(i, name) for i, name in enumerate(names) if i not in done]
        if resumed:
            print(f"resuming {staging}: {len(done)} of {len(names)} images done earlier", file=sys.stderr)
        settings = Settings(dataset, size, staging, args.format, args.compress_level)
        with open(log_path, "a") as log, tqdm(total=len(names), initial=len(done), unit="img",
                                              disable=True if args.no_progress else None) as bar:
            def finished(record):
                records[record["index"]] = record
                log.write(json.dumps(record) + "\n")
                log.flush()
                bar.update(1)

            if args.workers == 1 or len(todo) <= 1:
                for index, name in todo:
                    finished(prepare_one(index, name, source, settings))
            else:
                # forked, as training's loader workers are: nothing here has started torch's threads
                context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods()
                                                      else "spawn")
                with context.Pool(args.workers, _init_worker, (source, settings)) as pool:
                    for record in pool.imap_unordered(_prepare_in_worker, todo, chunksize=4):
                        finished(record)
        kept = sorted((r for r in records.values() if r["name"] is not None), key=lambda r: r["index"])
        skipped = Counter(r["kinds"][0] for r in records.values() if r["name"] is None)
        converted = Counter(k for r in kept for k in r["kinds"])
        info = {"tool": "dataset_tool.py", "transform_version": TRANSFORM_VERSION, "curriculum": curriculum,
                "dataset": dataset, "crop": spec, "size": size, "count": len(kept), "image_format": args.format,
                "resized_below_crop": "nearest" if size < spec["crop"] else None,
                "source": options["source"], "sources": len(names), "skipped": dict(sorted(skipped.items())),
                "converted": dict(sorted(converted.items())), "seconds_last_run": round(time.perf_counter() - started, 1)}
        if not kept:
            raise ToolError(f"--source {args.source}: none of the {len(names)} images can be used "
                            f"({', '.join(f'{k} {n}' for k, n in sorted(skipped.items()))}); see {log_path}")
        _pack(staging, dest, info, [r["name"] for r in kept])
        report = dest.with_name(dest.name + ".report.tsv")
        _write_report(report, sorted(records.values(), key=lambda r: r["index"]))
        shutil.rmtree(staging)
    except OSError as error:  # a full disk, a folder gone: what is done stays in the staging folder
        full = error.errno == errno.ENOSPC
        reason = "No space left on device" if full else (error.strerror or str(error))
        raise ToolError(f"cannot write {error.filename or dest}: {reason}; {'free space' if full else 'fix that'} and "
                        f"run the same command again to finish ({staging} keeps what is done)") from None
    seconds = time.perf_counter() - started

    def counts(counter):
        return ", ".join(f"{kind} {n}" for kind, n in sorted(counter.items())) or "none"

    return (f"prepared {len(kept)} of {len(names)} images ({describe_crop(spec)}, stored at {size}x{size}) into "
            f"{dest} in {seconds:.1f} s; skipped: {counts(skipped)}; converted: {counts(converted)}; "
            f"list: {report}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        print(prepare(args))
    except ToolError as error:
        print(f"error: {error}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt:
        print(f"interrupted: run the same command again to finish (done images are kept in "
              f"{Path(args.dest).expanduser()}.partial)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
