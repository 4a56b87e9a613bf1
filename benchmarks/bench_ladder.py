"""Does it learn 3D? The ladder of issue 29 on the embedded `Critters` data (docs/EXPERIMENTS.md, "Critters").

    python benchmarks/bench_ladder.py --rung one --seeds 0                 # one critter from every side
    python benchmarks/bench_ladder.py --rung family --seeds 0 1 2          # a family of critters
    python benchmarks/bench_ladder.py --rung consistency --seeds 0 1 2     # the paper's terms off against on
    python benchmarks/bench_ladder.py --rung family --seeds 0 --score_only # re-read finished runs

Each run is `main.py --curriculum Critters` with the rung's `--set`s, scored during training with the
`synthetic` metric (and `mvc` on the consistency rung) every `--eval_every` steps. The metric compares the
generator with the true critters at poses of the training distribution: silhouette IoU and depth error
over the true foreground, next to the real-against-real ceiling and the best of the trivial answers, each
fitted at its best (a sphere, an ellipsoid, a fixed blob, a flat wall, fog, the family's mean object).
A shape counts as learned where it beats the best of them: `depth_vs_trivial` (the generator's depth error
over the best trivial one) below 1, and the rung's target below that. The family rung is scored with
`synthetic_matched` instead (metrics/matched.py: each generated critter against its nearest held-out real one
and back, since a perfect generator draws other critters than those at the scored poses), on the numbered
checkpoints the run keeps every `--eval_every` steps, after training. Prints one table row per run and a
JSON line each, and draws the learning curves (score against step) to `<output_root>/<rung>_curves.png`.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Each rung: its variants (name -> extra --set values), steps, and the targets of issue 29.
RUNGS = {
    "one": {"variants": {"mvc": ["synthetic_objects=1"]}, "steps": 1600,
            "targets": {"depth_vs_trivial": 0.3, "minutes": 15}},
    # A family is scored with synthetic_matched (each generated critter against its nearest held-out real one and
    # back): minutes per checkpoint, so the run keeps numbered checkpoints and they are scored after training.
    "family": {"variants": {"mvc": []}, "steps": 4000, "metric": "synthetic_matched",
               "targets": {"depth_vs_trivial": 0.5, "iou_vs_trivial": 0.5, "minutes": 60}},
    "consistency": {"variants": {"mvc": [],
                                 "pigan": ["stereo_auxiliary=False", "reproj_lambda=0", "max_mixup_ratio=0"]},
                    "steps": 2000, "targets": {}},
}
COLUMNS = ("iou", "depth_l1_fg", "depth_vs_trivial", "iou_vs_trivial", "kid", "opaque")
CURVES = (("depth_vs_trivial", "depth error / best trivial (lower is better; < 1 beats them)"),
          ("iou", "silhouette IoU"))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rung", choices=sorted(RUNGS), required=True, help="which rung of the ladder to run")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (main.py --seed)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads per training run (main.py --threads)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the rung's)")
    p.add_argument("--eval_every", type=int, default=200, help="steps between scores during training")
    p.add_argument("--num_samples", type=int, default=256, help="poses per score (the metric's --num_synthetic)")
    p.add_argument("--output_root", default="runs/ladder", help="folder of the runs, one subfolder each")
    p.add_argument("--variants", nargs="+", default=None, help="run only these variants of the rung")
    p.add_argument("--train_args", default="", help="extra arguments for main.py, as one string")
    p.add_argument("--score_only", action="store_true", help="do not train: read the runs' metrics.jsonl")
    return p.parse_args(argv)


def run_dir(args, variant: str, seed: int) -> Path:
    root = Path(args.output_root)
    return (root if root.is_absolute() else ROOT / root) / f"{args.rung}_{variant}_s{seed}_t{args.threads}"


def train(args, variant: str, sets: list, seed: int) -> float:
    """One training run; returns its wall time in minutes (training only: a rung scored afterwards keeps
    numbered checkpoints every --eval_every steps instead of scoring during the run)."""
    steps = args.steps or RUNGS[args.rung]["steps"]
    scoring = ["--eval_freq", "0", "--model_save_interval", str(args.eval_every)] if "metric" in RUNGS[args.rung] \
        else ["--eval_freq", str(args.eval_every),
              "--eval_metrics", "synthetic,mvc" if args.rung == "consistency" else "synthetic"]
    command = [sys.executable, str(ROOT / "main.py"), "--curriculum", "Critters", "--output_dir",
               str(run_dir(args, variant, seed)), "--seed", str(seed), "--threads", str(args.threads),
               "--max_steps", str(steps), "--num_workers", "0", *scoring,
               "--no_progress", "--log_interval", "100", "--start_over",
               *[f"--set={s}" for s in sets], *args.train_args.split()]
    print("training:", " ".join(command), flush=True)
    started = time.time()
    subprocess.run(command, check=True, cwd=ROOT)
    return (time.time() - started) / 60


def score_checkpoints(args, path: Path, metric: str) -> None:
    """Score each numbered checkpoint of a run, and its last one, with `metric` through fid_evaluation.py (which
    appends the scores to the run's metrics.jsonl); checkpoints already scored there are skipped."""
    from utils.checkpoint import load_checkpoint

    scored = {row["step"] for row in evaluations(path, metric)}
    checkpoints = {int(p.stem.split("_")[1]): p for p in path.glob("checkpoint_*.pth")}
    last = int(load_checkpoint(path / "checkpoint.pth").get("step", 0))
    checkpoints.setdefault(last, path / "checkpoint.pth")
    for step, checkpoint in sorted(checkpoints.items()):
        if step in scored:
            continue
        command = [sys.executable, str(ROOT / "fid_evaluation.py"), "--path", str(checkpoint), "--metrics", metric,
                   "--threads", str(args.threads), "--num_synthetic", str(args.num_samples)]
        print("scoring:", " ".join(command), flush=True)
        subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)


def evaluations(path: Path, metric: str = "synthetic") -> list:
    """The rows of a run's metrics.jsonl scored with `metric` (synthetic or synthetic_matched), one per step (the
    last record of a step wins): {step, iou, depth_l1_fg, ...}, the metric's prefix dropped. Reads both the
    training loop's records (scores under "eval") and fid_evaluation.py's (scores at the top level)."""
    prefix = f"{metric}_"
    rows = {}
    for line in (path / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        scores = record.get("eval") or (record if record.get("kind") == "eval" else {})
        if f"{prefix}iou" in scores:
            rows[record["step"]] = {"step": record["step"],
                                    **{k[len(prefix):]: v for k, v in scores.items() if k.startswith(prefix)}}
    return [rows[step] for step in sorted(rows)]


def plot_curves(curves: dict, destination: Path) -> None:
    """Score against step, one panel per CURVES entry, one line per run (PIL only: no plotting dependency)."""
    from PIL import Image, ImageDraw

    width, height, margin = 520, 300, 48
    palette = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
               (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
    canvas = Image.new("RGB", (width * len(CURVES), height + 24 * (1 + len(curves) // 3)), "white")
    draw = ImageDraw.Draw(canvas)
    for panel, (key, title) in enumerate(CURVES):
        left = panel * width
        points = [(r["step"], r[key]) for rows in curves.values() for r in rows if r.get(key) == r.get(key)]
        if not points:
            continue
        max_step = max(s for s, _ in points)
        low, high = min(0.0, min(v for _, v in points)), max(1.0, max(v for _, v in points))
        x = lambda s: left + margin + (width - 2 * margin) * s / max(max_step, 1)
        y = lambda v: height - margin - (height - 2 * margin) * (v - low) / (high - low)
        draw.rectangle([left + margin, margin, left + width - margin, height - margin], outline="black")
        draw.text((left + margin, 14), title, fill="black")
        for value in (low, 1.0, high) if key == "depth_vs_trivial" else (low, high):
            draw.text((left + 4, y(value) - 6), f"{value:.2g}", fill="black")
            if key == "depth_vs_trivial" and value == 1.0:
                draw.line([x(0), y(1.0), x(max_step), y(1.0)], fill=(160, 160, 160))
        draw.text((left + width - margin - 60, height - margin + 6), f"step {max_step}", fill="black")
        for index, rows in enumerate(curves.values()):
            line = [(x(r["step"]), y(r[key])) for r in rows if r.get(key) == r.get(key)]
            if len(line) > 1:
                draw.line(line, fill=palette[index % len(palette)], width=2)
    for index, name in enumerate(curves):
        draw.text((margin + (index % 3) * 300, height + 4 + 20 * (index // 3)), name,
                  fill=palette[index % len(palette)])
    destination.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(destination)


def comparison_figure(run: Path, destination: Path, size: int = 64, views: int = 8, latents: int = 2) -> Path:
    """Truth against generated, turned all around: rows of the true critter 0 (image, depth), then for
    `latents` latents the generator's image and depth, at `views` yaws evenly around the circle (pitch at
    the training mean), rendered at `size` px (the field is continuous; its training size may be smaller).
    With one object (synthetic_objects 1) every latent should show the true critter."""
    import math

    import numpy as np
    import torch
    from PIL import Image

    from generators.cameras import cam2world_from_poses
    from generators.generators import RenderOptions
    from metrics.synthetic import procedural_dataset
    from utils.checkpoint import load_generator
    from utils.images import depth_to_uint8, to_uint8
    from generators.pretrained import trained_stage

    generator, curriculum, step = load_generator(run / "checkpoint.pth")
    metadata = trained_stage(curriculum, step).metadata
    near, far = float(metadata["ray_start"]), float(metadata["ray_end"])
    yaw = torch.tensor([float(metadata["h_mean"]) + 2 * math.pi * k / views for k in range(views)])
    pitch = torch.full_like(yaw, float(metadata["v_mean"]))
    truth = procedural_dataset(metadata, size, length=1)
    real = [truth.render(0, float(y), float(p)) for y, p in zip(yaw, pitch)]
    rows = [np.concatenate([to_uint8(v["image"]) for v in real], axis=1),
            np.concatenate([depth_to_uint8(torch.where(v["mask"], v["depth"], torch.tensor(far)), near, far)
                            for v in real], axis=1)]
    options = RenderOptions.from_metadata(metadata, evaluation=True, img_size=size, output_size=size)
    torch.manual_seed(0)
    z = torch.randn(latents, generator.z_dim)
    with torch.no_grad():
        for latent in z:
            out = generator.render_codes(generator.mapping(latent[None].expand(views, -1)), options,
                                         cam2world=cam2world_from_poses(yaw, pitch))
            rows.append(np.concatenate(list(to_uint8(out.image)), axis=1))
            rows.append(np.concatenate(list(depth_to_uint8(out.depth, near, far)), axis=1))
    destination.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(rows, axis=0)).save(destination)
    return destination


def main(argv=None) -> int:
    args = parse_args(argv)
    rung = RUNGS[args.rung]
    variants = {k: v for k, v in rung["variants"].items() if not args.variants or k in args.variants}
    minutes, curves, finals = {}, {}, []
    for variant, sets in variants.items():
        for seed in args.seeds:
            name = f"{variant} seed {seed}"
            if not args.score_only:
                minutes[name] = train(args, variant, sets, seed)
            metric = rung.get("metric", "synthetic")
            if metric != "synthetic":
                score_checkpoints(args, run_dir(args, variant, seed), metric)
            rows = evaluations(run_dir(args, variant, seed), metric)
            if not rows:
                print(f"error: {run_dir(args, variant, seed)} has no scores", file=sys.stderr)
                return 2
            curves[name] = rows
            figure = comparison_figure(run_dir(args, variant, seed),
                                       run_dir(args, variant, seed) / "truth_vs_generated.png")
            print(f"truth (rows 1-2) against generated (image and depth rows): {figure}", flush=True)
            final = dict(rows[-1], run=name, minutes=round(minutes.get(name, float("nan")), 1))
            finals.append(final)
            print(json.dumps(final), flush=True)
    first = finals[0]
    print(f"\n{args.rung}: ceiling (real vs real) iou {first['iou_ceiling']:.3f} depth {first['depth_l1_fg_ceiling']:.4f};"
          f" best trivial iou {first['iou_best_trivial']:.3f} depth {first['depth_l1_best_trivial']:.4f}"
          f" (sphere {first['depth_l1_sphere']:.4f}, ellipsoid {first['depth_l1_ellipsoid']:.4f},"
          f" wall {first['depth_l1_plane']:.4f}, mean object {first['depth_l1_mean_object']:.4f})")
    print(f"{'run':<18}{'step':>6}{'min':>7}" + "".join(f"{c:>18}" for c in COLUMNS))
    for row in finals:
        print(f"{row['run']:<18}{row['step']:>6}{row['minutes']:>7}" +
              "".join(f"{row.get(c, float('nan')):>18.4g}" for c in COLUMNS))
    for key, target in rung["targets"].items():
        if key != "minutes":
            met = [row["run"] for row in finals if row.get(key, float("inf")) <= target] if key == "depth_vs_trivial" \
                else [row["run"] for row in finals if row.get(key, float("-inf")) >= target]
            print(f"target {key} {'<=' if key == 'depth_vs_trivial' else '>='} {target}: met by {len(met)} of "
                  f"{len(finals)} runs")
    curves_path = Path(args.output_root) / f"{args.rung}_curves.png"
    plot_curves(curves, curves_path if curves_path.is_absolute() else ROOT / curves_path)
    print(f"learning curves: {curves_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
