"""Score a checkpoint from the command line: FID, KID, multi-view consistency, Synthetic ground truth.

    python fid_evaluation.py --path CKPT [--metrics fid,kid,mvc,synthetic] [...]

Scores the generator (EMA weights by default) at the stage it was last trained in, prints
a short readable summary named as in the README, then one JSON line of every result
(the last line of the output, for scripts), and for a checkpoint inside a run directory
appends that line to `<run_dir>/metrics.jsonl`. The metrics themselves live in the
`metrics/` package (docs/METHOD.md §10); this file is only the command line.
Its model flags (--path, --curriculum, --no_ema, --psi, --max_batch_size, --device, --threads) are
those of the other scripts (`utils.rendering_cli.add_model_arguments`), and so are its exit codes
(`utils.cli.run_cli`: 0, 2 for a usage or input error in one `error:` line, 1 when the work fails).
Entry point: `main(argv)`; `score_checkpoint(args)` returns the record.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from generators.pretrained import load_model
from metrics.fid_kid import MIN_FID_SAMPLES, RECOMMENDED_FID_SAMPLES
from metrics.inception import FID_WEIGHTS_FILENAME, InceptionWeightsMissing, hub_weights_path, load_inception
from metrics.metric_main import MetricOptions, evaluate, list_metrics, parse_metrics, summary_lines, uses_inception
from metrics.metric_utils import REALS_CACHE_ENV
from utils.cli import CLIError, HelpFormatter, finite_float, run_cli, seed_value
from utils.cpu_runtime import set_threads
from utils.rendering_cli import add_model_arguments


def find_run_dir(path) -> Optional[Path]:
    """The run directory a checkpoint belongs to: the folder (or the checkpoint's folder)
    when it holds metrics.jsonl or checkpoint.pth; None otherwise."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    if (folder / "metrics.jsonl").exists() or (folder / "checkpoint.pth").exists():
        return folder
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Score a checkpoint: FID/KID against the curriculum's dataset, multi-view consistency, "
                    "and ground truth for Synthetic runs. Prints a readable summary, then one JSON line of "
                    "all results; appends that line to <run_dir>/metrics.jsonl.",
        formatter_class=HelpFormatter)
    # The model flags of the other scripts; the truncation defaults to none (the scores' convention) and the
    # points per SIREN call to the generator's own chunking, as before these flags were shared.
    add_model_arguments(parser, psi=MetricOptions.psi,
                        psi_note="the published code used 0.6; recorded with the scores",
                        max_batch_size=MetricOptions.max_batch_size)
    parser.add_argument("--num_real", type=int, default=MetricOptions.num_real,
                        help=f"number of real images (cached as PNGs); at least {MIN_FID_SAMPLES} for fid/kid, "
                             f"and below {RECOMMENDED_FID_SAMPLES} the scores are biased (a warning says so)")
    parser.add_argument("--num_fake", type=int, default=MetricOptions.num_fake,
                        help=f"number of generated images for FID/KID; at least {MIN_FID_SAMPLES}, and below "
                             f"{RECOMMENDED_FID_SAMPLES} the scores are biased (a warning says so)")
    parser.add_argument("--metrics", default="fid", help=f"comma-separated subset of {','.join(list_metrics())}")
    parser.add_argument("--real_dir", default=None,
                        help=f"cache root for real images and their Inception statistics; unset: "
                             f"${REALS_CACHE_ENV}/fid_reals, else ~/.cache/mvcgan/fid_reals")
    parser.add_argument("--inception_weights", default=None,
                        help=f"local copy of {FID_WEIGHTS_FILENAME}; unset: the torch hub cache "
                             f"({hub_weights_path()}), else a download")
    parser.add_argument("--batch_size", type=int, default=MetricOptions.batch_size,
                        help="images per generator/Inception batch (lower it if the decoder runs out of memory)")
    parser.add_argument("--seed", type=seed_value, default=MetricOptions.seed, help="seed of the latents and poses")
    parser.add_argument("--num_mvc", type=int, default=MetricOptions.num_mvc,
                        help="number of latents for the mvc metric")
    parser.add_argument("--mvc_yaw_step", type=finite_float, default=MetricOptions.mvc_yaw_step,
                        help="yaw between the two mvc views, radians")
    parser.add_argument("--num_synthetic", type=int, default=MetricOptions.num_synthetic,
                        help="number of poses (real heads and latents) for the synthetic metric; for "
                             "synthetic_matched, objects (real and generated), each seen from 8 poses")
    parser.add_argument("--num_workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="data loader workers for preparing/reading real images")
    parser.add_argument("--no_append", action="store_true", help="do not append to the run's metrics.jsonl")
    parser.add_argument("--random_inception", action="store_true",
                        help="for tests only: random-weight Inception (no download; scores are meaningless)")
    return parser


def validate_args(parser: argparse.ArgumentParser, args) -> None:
    """Usage errors exit with code 2 before anything is loaded; small FID sample counts warn."""
    try:
        args.metrics = parse_metrics(args.metrics)
    except ValueError as error:
        parser.error(str(error))
    for name in ("num_real", "num_fake", "num_workers"):
        if getattr(args, name) < 0:
            parser.error(f"--{name} must not be negative, got {getattr(args, name)}")
    for name in ("batch_size", "num_mvc", "num_synthetic"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.max_batch_size is not None and args.max_batch_size < 1:
        parser.error(f"--max_batch_size must be at least 1, got {args.max_batch_size}")
    if uses_inception(args.metrics):
        for name in ("num_real", "num_fake"):
            count = getattr(args, name)
            if count < MIN_FID_SAMPLES:
                parser.error(f"--{name} must be at least {MIN_FID_SAMPLES} for fid/kid (a covariance needs two "
                             f"images), got {count}")
            if count < RECOMMENDED_FID_SAMPLES:
                print(f"warning: --{name} {count} is below {RECOMMENDED_FID_SAMPLES}: FID/KID are biased upwards "
                      "with few images; compare only scores computed with the same counts", file=sys.stderr)


def metrics_log(args) -> Optional[Path]:
    """The run's metrics.jsonl the record is appended to (None: not in a run directory, or --no_append),
    checked before the evaluation: CLIError when it is a folder or cannot be written."""
    run_dir = find_run_dir(args.path)
    if run_dir is None or args.no_append:
        return None
    log = run_dir / "metrics.jsonl"
    problem = None
    if log.is_dir():
        problem = "is a folder, not a file"
    elif not os.access(log if log.exists() else run_dir, os.W_OK):
        problem = "cannot be written (no permission)"
    if problem:
        raise CLIError(f"{log} {problem}: the scores are appended to it; fix it, or pass --no_append")
    return log


def score_checkpoint(args) -> dict:
    """Everything main() does after parsing: load, score at the trained stage, print, append; the record."""
    set_threads(args.threads)
    log = metrics_log(args)
    model = load_model(args.path, args.curriculum, use_ema=not args.no_ema, device=args.device)
    stage = model.stage  # the stage the weights were last trained in, with its fade-in
    try:
        inception = None
        if uses_inception(args.metrics):
            inception = load_inception(args.inception_weights, device=model.device,
                                       random_init=args.random_inception)
        results = evaluate(model.generator, stage.metadata, args.metrics, num_real=args.num_real,
                           num_fake=args.num_fake, psi=args.psi, real_dir=args.real_dir, device=model.device,
                           batch_size=args.batch_size, max_batch_size=args.max_batch_size, seed=args.seed,
                           inception=inception, alpha=stage.alpha, num_mvc=args.num_mvc,
                           mvc_yaw_step=args.mvc_yaw_step, num_workers=args.num_workers,
                           num_synthetic=args.num_synthetic)
    except InceptionWeightsMissing as error:
        raise CLIError(str(error)) from None
    except ValueError as error:  # inputs that cannot be scored: too few images, another dataset's checkpoint
        raise CLIError(str(error)) from None
    if "mvc_warning" in results:
        print(f"warning: {results['mvc_warning']}", file=sys.stderr)
    record = {"step": int(model.step), "kind": "eval", **results, "ema": model.use_ema,
              "checkpoint": str(Path(model.checkpoint_path).resolve()), "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if args.random_inception:
        record["random_inception"] = True  # scores meaningless: mark them
    weights = "EMA" if model.use_ema else "raw"
    print(f"{model.checkpoint_path}: step {model.step}, {weights} weights, {results['img_size']} px NeRF "
          f"-> {results['output_size']} px, psi {results['psi']:g}")
    for line in summary_lines(record, args.metrics):
        print(line)
    line = json.dumps(record)
    print(line, flush=True)
    if log is not None:
        with open(log, "a") as handle:
            handle.write(line + "\n")
    return record


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Exit code 0 (the record is the last line printed), 2 for usage or input errors, 1 when the work
    fails; `score_checkpoint(args)` returns the record itself."""
    parser = build_parser()
    args = parser.parse_args(argv)
    validate_args(parser, args)
    return run_cli(lambda: score_checkpoint(args))


if __name__ == "__main__":
    sys.exit(main())
