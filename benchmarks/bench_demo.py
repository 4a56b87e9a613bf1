"""Does the faces demo learn? Train `Synthetic` and print its ground-truth metric over time.

    python benchmarks/bench_demo.py --output_dir runs/bench_demo --seed 0
    python benchmarks/bench_demo.py --output_dir runs/faces --score_only   # score an existing run

Runs the README's faces command (`main.py --curriculum Synthetic`) with numbered checkpoints
every `--every` steps, then scores each checkpoint with the `synthetic` metric (`metrics/synthetic.py`)
(silhouette IoU, depth error, pixel KID against the true heads, with the real-vs-real ceiling
and the untrained floor). Prints a table and one JSON line per checkpoint: step, minutes of
training wall time when the checkpoint was written, and the scores. Training and scoring run
one after the other, so the scoring never slows the training clock.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

COLUMNS = ("step", "minutes", "iou", "depth_l1_fg", "depth_l1", "kid", "iou_closed", "depth_closed", "kid_closed")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output_dir", default="runs/bench_demo", help="run directory to train into (or to score)")
    p.add_argument("--seed", type=int, default=0, help="training seed (main.py --seed)")
    p.add_argument("--every", type=int, default=250, help="steps between scored checkpoints")
    p.add_argument("--num_samples", type=int, default=256, help="poses/latents per score")
    p.add_argument("--score_only", action="store_true", help="do not train: score the run's numbered checkpoints")
    p.add_argument("--train_args", default="", help="extra arguments for main.py, as one string")
    return p.parse_args(argv)


def train(args) -> float:
    """Run the demo; returns its start time (the checkpoints' mtimes are measured from it)."""
    command = [sys.executable, str(ROOT / "main.py"), "--curriculum", "Synthetic", "--output_dir", args.output_dir,
               "--seed", str(args.seed), "--model_save_interval", str(args.every), "--no_progress",
               *args.train_args.split()]
    print("training:", " ".join(command), flush=True)
    started = time.time()
    subprocess.run(command, check=True, cwd=ROOT)
    print(f"training took {(time.time() - started) / 60:.1f} min", flush=True)
    return started


def score(run_dir: Path, started: float | None, num_samples: int) -> list:
    from metrics.synthetic import synthetic_scores
    from utils.checkpoint import load_generator
    from generators.pretrained import trained_stage

    options_path = run_dir / "options.json"
    if started is None and options_path.exists():
        started = options_path.stat().st_mtime  # written when training starts
    rows = []
    checkpoints = sorted(run_dir.glob("checkpoint_*.pth"), key=lambda p: int(re.findall(r"\d+", p.name)[-1]))
    if not checkpoints:
        raise SystemExit(f"error: no numbered checkpoints in {run_dir}")
    if (run_dir / "checkpoint.pth").exists():  # the end of the run, when not a multiple of --every
        checkpoints.append(run_dir / "checkpoint.pth")
    for path in checkpoints:
        generator, curriculum, step = load_generator(path)
        if rows and step <= rows[-1]["step"]:
            continue
        stage = trained_stage(curriculum, step)
        results = synthetic_scores(generator, stage.metadata, num_samples=num_samples, alpha=stage.alpha)
        row = {"step": step, "minutes": round((path.stat().st_mtime - started) / 60, 2) if started else None,
               **{k[len("synthetic_"):]: v for k, v in results.items() if k.startswith("synthetic_")}}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def print_table(rows: list) -> None:
    first = rows[0]
    print("ceiling (real vs real): iou {iou_ceiling:.3f}  depth_l1_fg {depth_l1_fg_ceiling:.4f}  "
          "kid {kid_ceiling:.4f}".format(**first))
    print("floor (untrained):      iou {iou_floor:.3f}  depth_l1_fg {depth_l1_fg_floor:.4f}  "
          "kid {kid_floor:.4f}".format(**first))
    if "iou_prior" in first:
        print("sphere prior alone:     iou {iou_prior:.3f}  depth_l1_fg {depth_l1_fg_prior:.4f}  "
              "kid {kid_prior:.4f}  (the untrained generator with the curriculum's prior)".format(**first))
    print("trivial baselines:      iou {iou_fog:.3f} (opaque everywhere), {iou_blob:.3f} (one fixed blob)  "
          "depth_l1_fg {depth_l1_plane:.4f} (a flat wall at the best depth)".format(**first))
    print(" ".join(f"{c:>12}" for c in COLUMNS))
    for row in rows:
        print(" ".join(f"{row[c]:>12.4g}" if isinstance(row[c], float) else f"{str(row[c]):>12}" for c in COLUMNS))


def main(argv=None) -> None:
    args = parse_args(argv)
    started = None if args.score_only else train(args)
    print_table(score(ROOT / args.output_dir if not Path(args.output_dir).is_absolute() else Path(args.output_dir),
                      started, args.num_samples))


if __name__ == "__main__":
    main()
