"""Launch MVCGAN training: `python main.py --curriculum CelebAHQ --output_dir celebahq_exp`.

Starts one process per visible GPU (NCCL), or `--nproc` CPU processes (gloo), or
joins a `torchrun` job when its environment variables are set. The curriculum and
its dataset are checked before any process is spawned.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.multiprocessing as mp

import curriculums
from datasets import DatasetError, check_dataset
from train import TrainConfig, train
from utils.checkpoint import CheckpointError, resolve_checkpoint_path


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--curriculum", required=True, help=f"curriculum name in curriculums.py: {sorted(curriculums.CURRICULA)}")
    p.add_argument("--output_dir", default="runs/debug", help="run directory: checkpoints, grids, metrics.jsonl")
    p.add_argument("--n_epochs", type=int, default=3000, help="stop after this many passes over the data")
    p.add_argument("--sample_interval", type=int, default=200,
                   help="steps between sample grids and the latest checkpoint.pth (0: never)")
    p.add_argument("--model_save_interval", type=int, default=5000,
                   help="steps between numbered checkpoints checkpoint_{step:06d}.pth (0: never)")
    p.add_argument("--eval_freq", type=int, default=None,
                   help="steps between FID evaluations with the EMA weights (0: off; default 5000, off for Synthetic)")
    p.add_argument("--eval_metrics", default="fid", help="comma-separated metrics for evaluations: fid,kid,mvc")
    p.add_argument("--eval_dir", default=None, help="cache folder for the real images and statistics of the evaluation")
    p.add_argument("--load_dir", default=None, help="resume from this run directory's checkpoint.pth (or a checkpoint file)")
    p.add_argument("--set_step", type=int, default=None, help="override the step counter after loading")
    p.add_argument("--max_steps", type=int, default=None, help="stop after this step, saving a checkpoint")
    p.add_argument("--port", type=int, default=12355, help="localhost port for the process group of spawned processes")
    p.add_argument("--nproc", type=int, default=None, help="processes on CPU (default 1); on GPU one per visible device")
    p.add_argument("--num_workers", type=int, default=2, help="data loader workers per process")
    p.add_argument("--precision", choices=["fp16", "bf16", "fp32"], default="fp16",
                   help="mixed precision on CUDA (CPU always trains in fp32)")
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto", help="where to train")
    p.add_argument("--log_interval", type=int, default=10, help="steps between lines in metrics.jsonl")
    p.add_argument("--seed", type=int, default=0, help="base random seed (process r uses seed + r)")
    p.add_argument("--no_progress", action="store_true", help="hide the tqdm progress bars")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the FiLM-SIREN (needs a C++ compiler on CPU, Triton on GPU; eager otherwise)")
    p.add_argument("--keep_freed_memory", action="store_true",
                   help="CPU: keep freed activation memory for reuse (less kernel time, higher peak RSS)")
    return p.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    eval_freq = args.eval_freq
    if eval_freq is None:
        eval_freq = 0 if args.curriculum == "Synthetic" else 5000
    return TrainConfig(curriculum=args.curriculum, output_dir=args.output_dir, n_epochs=args.n_epochs,
                       sample_interval=args.sample_interval, model_save_interval=args.model_save_interval,
                       eval_freq=eval_freq, eval_dir=args.eval_dir, eval_metrics=args.eval_metrics,
                       load_dir=args.load_dir, set_step=args.set_step, max_steps=args.max_steps,
                       num_workers=args.num_workers, precision=args.precision, log_interval=args.log_interval,
                       seed=args.seed, device=args.device, progress=not args.no_progress, compile=args.compile,
                       keep_freed_memory=args.keep_freed_memory)


def _run(rank: int, world_size: int, config: TrainConfig, **kwargs) -> int:
    try:
        return train(rank, world_size, config, **kwargs)
    except FloatingPointError as error:  # repeated non-finite losses: a message, not a traceback
        print(f"error: {error}", file=sys.stderr)
        return 1


def _spawned(rank: int, world_size: int, config: TrainConfig, init_method: str) -> None:
    code = _run(rank, world_size, config, init_method=init_method)
    if code:
        sys.exit(code)


def main(argv=None) -> int:
    args = parse_args(argv)
    # Fail fast, before any process exists: unknown curriculum, missing keys, empty dataset glob,
    # nothing to resume from.
    try:
        curriculum = curriculums.get_curriculum(args.curriculum)
        curriculums.validate_curriculum(curriculum, args.curriculum)
        check_dataset(curriculums.extract_metadata(curriculum, 0), args.curriculum)
        if args.load_dir:
            resolve_checkpoint_path(args.load_dir)
    except (ValueError, DatasetError, CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    config = config_from_args(args)

    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:  # launched by torchrun
        return _run(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), config, init_method="env://",
                    local_rank=int(os.environ.get("LOCAL_RANK", 0)))
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    world_size = torch.cuda.device_count() if use_cuda else (args.nproc or 1)
    if world_size <= 1:
        return _run(0, 1, config)
    init_method = f"tcp://127.0.0.1:{args.port}"
    mp.spawn(_spawned, args=(world_size, config, init_method), nprocs=world_size, join=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
