"""Images per second one loader process delivers: raw 1024² PNGs and JPEGs against the prepared zip
(dataset_tool.py), at each stage's size of CelebAHQ and FFHQ; and how many loader processes per GPU keep
up with a training step of a given length at the published batch sizes.

    python benchmarks/bench_loader.py --images 48 --threads 1              # the docs/PERFORMANCE.md table
    python benchmarks/bench_loader.py --smoke                              # tiny, for the tests

The raw images are made here (nothing is downloaded): smooth colour noise over five octaves with a
fine grain, whose PNGs (about 1.4 MB at 1024²) and JPEGs (quality 90, about 160 kB) are the size of
FFHQ's PNGs and CelebA-HQ's JPEGs, and decode about as fast. Each is prepared with dataset_tool.py
(timed: the tool's seconds per image), then one process reads every item as training does
(`dataset[(index, flip)]`, half of them flipped) for each stage size, from the raw files and from the
prepared zips in both formats (`--format png`, `npy`); the best of `--repeats` passes
counts, in wall time and in this process's CPU time (on a busy machine the CPU rate is what a worker
with a core to itself delivers; the speed-ups and the workers per GPU use it). One such process is
what one DataLoader worker does, so images/s here is per worker. Prints a table and, last, one JSON line.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

import curriculums  # noqa: E402
import dataset_tool  # noqa: E402
from datasets import build_dataset  # noqa: E402

# (curriculum, the format its images come in): CelebA-HQ is distributed as JPEGs, FFHQ as PNGs
CURRICULA = (("CelebAHQ", "jpg"), ("FFHQ", "png"))
FORMATS = ("png", "npy")  # dataset_tool.py --format
JPEG_QUALITY = 90


def photo_like(seed: int, size: int) -> Image.Image:
    """Smooth colour noise in five octaves (3 to 260 cells across) plus a grain of 1.5 codes: PNG-compressible
    about as well as a face photo (FFHQ: 1.3 MB at 1024²)."""
    rng = np.random.default_rng(seed)
    out = np.full((size, size, 3), 128.0, np.float32)
    for cells, amplitude in ((3, 90), (8, 45), (24, 22), (80, 10), (260, 5)):
        small = rng.normal(0, 1, (cells, cells, 3)).astype(np.float32)
        out += amplitude * np.stack([np.asarray(Image.fromarray(small[..., c], "F").resize((size, size), Image.BICUBIC))
                                     for c in range(3)], -1)
    out += rng.normal(0, 1.5, out.shape).astype(np.float32)
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))


def make_raw(folder: Path, count: int, size: int, fmt: str) -> float:
    """`count` images in `folder`; their mean file size in MB."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        path = folder / f"{i:05d}.{fmt}"
        if not path.exists():
            image = photo_like(i, size)
            image.save(path, quality=JPEG_QUALITY) if fmt == "jpg" else image.save(path)
    return float(np.mean([p.stat().st_size for p in folder.iterdir()]) / 1e6)


def items_per_second(dataset, count: int, repeats: int) -> tuple:
    """(items per wall second, items per CPU second of this process), each the best of `repeats` passes. On a
    busy machine the CPU rate is what a worker with a core to itself delivers."""
    best_wall = best_cpu = math.inf
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        for index in range(count):
            dataset[(index, index % 2 == 1)]
        best_wall, best_cpu = min(best_wall, time.perf_counter() - wall), min(best_cpu, time.process_time() - cpu)
    return count / best_wall, count / max(best_cpu, 1e-9)


def stage_table(curriculum: str) -> list:
    """[(stage step, output size, batch per GPU)] of a curriculum's stages."""
    plan = curriculums.get_curriculum(curriculum)
    return [(step, int(curriculums.extract_metadata(plan, step)["output_size"]),
             int(curriculums.extract_metadata(plan, step)["batch_size"]))
            for step in curriculums.stage_boundaries(plan)[:-1]]


def workers_needed(batch: int, step_seconds: float, rate: float) -> int:
    """Loader processes per GPU that deliver `batch` images within one step of `step_seconds`."""
    return max(1, math.ceil(batch / (step_seconds * rate)))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=48, help="raw images per format (each read once per pass)")
    p.add_argument("--raw_size", type=int, default=1024, help="side of the raw images")
    p.add_argument("--sizes", default=None, help="comma-separated stage sizes (default: the curricula's stages)")
    p.add_argument("--repeats", type=int, default=2, help="passes per measurement; the fastest counts")
    p.add_argument("--step_seconds", default="0.5,1,2", help="training step lengths for the workers-per-GPU table")
    p.add_argument("--compress_level", type=int, default=dataset_tool.PNG_COMPRESS_LEVEL, help="of the prepared PNGs")
    p.add_argument("--tool_workers", type=int, default=1, help="dataset_tool.py --workers")
    p.add_argument("--work_dir", default=None, help="where the images go (default: a temporary folder); "
                                                    "raw images already there are reused")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (a loader worker uses 1)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, one pass: for the tests")
    return p.parse_args(argv)


def run(args, work: Path) -> dict:
    torch.set_num_threads(args.threads)
    steps = [float(s) for s in args.step_seconds.split(",")]
    result = {"images": args.images, "raw_size": args.raw_size, "threads": args.threads,
              "compress_level": args.compress_level, "curricula": {}}
    for curriculum, fmt in CURRICULA:
        raw = work / f"raw_{fmt}_{args.raw_size}"
        mean_mb = make_raw(raw, args.images, args.raw_size, fmt)
        prepared, tool = {}, {}
        for image_format in FORMATS:
            dest = work / f"prepared_{fmt}_{args.raw_size}_{image_format}_level{args.compress_level}.zip"
            for leftover in (dest, dest.with_name(dest.name + ".report.tsv")):
                leftover.unlink(missing_ok=True)
            started = time.perf_counter()
            code = dataset_tool.main(["--source", str(raw), "--dest", str(dest), "--curriculum", curriculum,
                                      "--format", image_format, "--workers", str(args.tool_workers),
                                      "--compress_level", str(args.compress_level), "--no_progress"])
            seconds = time.perf_counter() - started
            if code != 0:
                raise SystemExit(f"dataset_tool.py failed with exit code {code}")
            prepared[image_format] = dest
            tool[image_format] = {"seconds": round(seconds, 2), "seconds_per_image": round(seconds / args.images, 4),
                                  "mean_mb": round(dest.stat().st_size / 1e6 / args.images, 3)}
        rows = []
        stages = stage_table(curriculum)
        if args.sizes:
            wanted = [int(s) for s in args.sizes.split(",")]
            stages = [s for s in stages if s[1] in wanted] or [(0, size, 56) for size in wanted]
        for step, size, batch in stages:
            meta = curriculums.extract_metadata(curriculums.get_curriculum(curriculum), step)
            rates = {}
            for label, path in (("raw", raw),) + tuple((f"prepared_{f}", prepared[f]) for f in FORMATS):
                dataset = build_dataset(dict(meta, dataset_path=str(path)), size, flip=False)
                assert len(dataset) == args.images
                rates[label] = items_per_second(dataset, args.images, args.repeats)
            row = {"stage": step, "size": size, "batch": batch}
            for label, (wall_rate, cpu_rate) in rates.items():  # workers: each with a core to itself
                row[f"{label}_per_s"] = round(wall_rate, 2)
                row[f"{label}_per_cpu_s"] = round(cpu_rate, 2)
                row[f"workers_{label}"] = {f"{t:g}": workers_needed(batch, t, cpu_rate) for t in steps}
            for image_format in FORMATS:
                row[f"speedup_{image_format}"] = round(rates[f"prepared_{image_format}"][1] / rates["raw"][1], 2)
            rows.append(row)
        result["curricula"][curriculum] = {"raw_format": fmt, "raw_mean_mb": round(mean_mb, 3), "tool": tool,
                                           "tool_workers": args.tool_workers, "stages": rows}
    return result


def print_table(result: dict) -> None:
    for curriculum, record in result["curricula"].items():
        tool = "; ".join(f"{f}: {t['mean_mb']} MB each, dataset_tool.py {t['seconds']} s" for f, t in record["tool"].items())
        print(f"{curriculum}: {result['images']} raw {record['raw_format']} {result['raw_size']}² "
              f"({record['raw_mean_mb']} MB each); prepared zips ({record['tool_workers']} tool worker) {tool}")
        steps = list(record["stages"][0]["workers_raw"])
        labels = ["raw"] + [f"prepared_{f}" for f in FORMATS]
        print("| stage | size | batch | " + " | ".join(f"{label} img/s (per CPU s)" for label in labels) + " | speedup "
              + " / ".join(FORMATS) + " | " + " | ".join(f"workers at {t} s/step: " + " / ".join(labels)
                                                      for t in steps) + " |")
        for row in record["stages"]:
            print(f"| {row['stage']} | {row['size']} | {row['batch']} | "
                  + " | ".join(f"{row[f'{label}_per_s']} ({row[f'{label}_per_cpu_s']})" for label in labels) + " | "
                  + " / ".join(f"{row[f'speedup_{f}']}x" for f in FORMATS) + " | "
                  + " | ".join(" / ".join(str(row[f"workers_{label}"][t]) for label in labels) for t in steps) + " |")


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.smoke:
        args.images, args.raw_size, args.repeats, args.sizes = 2, 64, 1, args.sizes or "64"
    if args.work_dir:
        result = run(args, Path(args.work_dir))
    else:
        with tempfile.TemporaryDirectory(prefix="bench_loader_") as work:
            result = run(args, Path(work))
    print_table(result)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
