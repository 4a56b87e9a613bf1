"""Launch MVCGAN training: `python main.py --curriculum CelebAHQ --output_dir celebahq_exp`.

Starts one process per visible GPU (NCCL), or `--nproc` CPU processes (gloo), or
joins a `torchrun` job when its environment variables are set. The flags become a
run_spec.TrainConfig (whose fields give them their defaults), resolved once into the
RunSpec every process trusts (run_spec.py). Everything that can be checked (flags,
curriculum and --set values, dataset size, output folder, port, the checkpoint to
resume) is checked before any process is spawned: a problem is one `error:` line and
exit code 2. Then the launcher locks the output folder for the whole run (utils/run_dir.py):
a second run there is refused, and so is a fresh run over another run's files unless told.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Optional

import torch
import torch.multiprocessing as mp

import curriculums
from datasets import DatasetError
from run_spec import EVAL_FREQ, RunSpec, TrainConfig, check_run, resolve_run
from train import LoaderFailed, train
from utils.checkpoint import CheckpointError, describe_os_error
from utils.cli import HelpFormatter, seed_value
from utils.cpu_runtime import add_threads_argument, available_cores
from utils.run_dir import PREVIOUS_PREFIX, RunDirLock, check_output_path, make_room

# The flags' defaults: TrainConfig's.
DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}


def parse_args(argv=None) -> argparse.Namespace:
    d = DEFAULTS
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--curriculum", required=True, help=f"curriculum name in curriculums.py: {sorted(curriculums.CURRICULA)}")
    p.add_argument("--output_dir", default=d["output_dir"], help="run directory: checkpoints, grids, metrics.jsonl")
    p.add_argument("--n_epochs", type=int, default=d["n_epochs"], help="stop after this many passes over the data")
    p.add_argument("--sample_interval", type=int, default=d["sample_interval"],
                   help="steps between sample grids and the latest checkpoint.pth (0: never)")
    p.add_argument("--model_save_interval", type=int, default=d["model_save_interval"],
                   help="steps between numbered checkpoints checkpoint_{step:06d}.pth (0: never)")
    p.add_argument("--eval_freq", type=int, default=d["eval_freq"],
                   help=f"steps between FID evaluations with the EMA weights (0: off; default {EVAL_FREQ}, off for "
                        f"Synthetic)")
    p.add_argument("--eval_metrics", default=d["eval_metrics"], help="comma-separated metrics for evaluations: fid,kid,mvc,synthetic,synthetic_aligned,synthetic_matched (the synthetic ones: procedural data sets only)")
    p.add_argument("--eval_dir", default=d["eval_dir"], help="cache folder for the real images and statistics of the evaluation")
    p.add_argument("--load_dir", default=d["load_dir"], help="resume from this run directory's checkpoint.pth (or a checkpoint file)")
    p.add_argument("--resume", choices=["never", "auto"], default=d["resume"],
                   help="auto: if --output_dir already holds a checkpoint.pth, resume from it (a requeued job "
                        "running the same command again), else start from --load_dir or fresh; never: only "
                        "--load_dir resumes")
    p.add_argument("--start_over", action="store_true",
                   help="start a fresh run in an --output_dir that holds another run's files, after moving them "
                        f"to {PREVIOUS_PREFIX}<time>/ inside it (without this flag such a folder is refused unless "
                        "the run continues it: --resume auto, or --load_dir of that folder)")
    p.add_argument("--allow_curriculum_change", action="store_true",
                   help="allow resuming a checkpoint trained with another curriculum: the loaded weights, "
                        "optimiser state and step counter then train on this curriculum's data and "
                        "hyper-parameters, and the checkpoint's --set overrides are dropped")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="change a curriculum value (repeatable): KEY a global or STAGE.KEY, VALUE a Python "
                        "literal or a string, e.g. --set dataset_path=/data/ffhq --set 0.batch_size=8; "
                        "recorded in options.json and the checkpoint and applied again on resume")
    p.add_argument("--set_step", type=int, default=d["set_step"], help="override the step counter after loading")
    p.add_argument("--max_steps", type=int, default=d["max_steps"], help="stop after this step, saving a checkpoint")
    p.add_argument("--port", type=int, default=None,
                   help="localhost port for the process group of spawned processes (default: a free one)")
    p.add_argument("--nproc", type=int, default=None, help="processes on CPU (default 1); on GPU one per visible device")
    p.add_argument("--num_workers", type=int, default=d["num_workers"], help="data loader workers per process")
    add_threads_argument(p, "torch CPU threads per training process (default: torch's choice, one per core, for "
                            "one process; the cores divided among the processes that --nproc or several GPUs "
                            "start). Set it when other jobs share the machine: idle torch threads spin, and one "
                            "thread per free core is much faster than one per core on a busy machine. A resumed "
                            "run is bit for bit the uninterrupted one only with the same thread count")
    p.add_argument("--precision", choices=["fp16", "bf16", "fp32"], default=d["precision"],
                   help="mixed precision on CUDA (CPU always trains in fp32)")
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default=d["device"], help="where to train")
    p.add_argument("--log_interval", type=int, default=d["log_interval"],
                   help="steps between lines in metrics.jsonl (and progress lines when there are no bars)")
    p.add_argument("--seed", type=seed_value, default=d["seed"], help="base random seed (process r uses seed + r)")
    p.add_argument("--no_progress", action="store_true",
                   help="hide the tqdm progress bars (they are off anyway when stderr is not a terminal); "
                        "progress is logged every --log_interval steps instead")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the FiLM-SIREN (needs a C++ compiler on CPU, Triton on GPU; eager otherwise)")
    p.add_argument("--keep_freed_memory", action="store_true",
                   help="CPU: keep freed activation memory for reuse (less kernel time, higher peak RSS)")
    return p.parse_args(argv)


# Smallest accepted value of each integer flag (None: the flag is unset).
FLAG_MINIMUMS = {"n_epochs": 1, "sample_interval": 0, "model_save_interval": 0, "eval_freq": 0, "log_interval": 1,
                 "max_steps": 1, "set_step": 0, "nproc": 1, "num_workers": 0, "port": 1}


def check_flags(args: argparse.Namespace) -> None:
    for name, minimum in FLAG_MINIMUMS.items():
        value = getattr(args, name)
        if value is not None and value < minimum:
            raise ValueError(f"--{name} must be at least {minimum} (got {value})")
    if args.port is not None and args.port > 65535:
        raise ValueError(f"--port must be at most 65535 (got {args.port})")
    if args.start_over and args.resume == "auto":
        raise ValueError("--start_over starts a fresh run and --resume auto continues one: give one of them")


def process_group_port(requested: Optional[int]) -> int:
    """The port for the spawned processes' rendezvous: the requested one if it is free, else a free one."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", requested or 0))
        except OSError as error:
            raise ValueError(f"--port {requested} is not available ({error.strerror}); pick another with --port, "
                             f"or leave --port out to take a free one") from error
        return probe.getsockname()[1]


def threads_per_process(requested: Optional[int], spawned: int) -> Optional[int]:
    """--threads, else the cores divided among the `spawned` processes the launcher starts (None: torch's
    choice, for a single process or one that torchrun started, which sets OMP_NUM_THREADS itself)."""
    if requested is not None or spawned <= 1:
        return requested
    return max(1, available_cores() // spawned)


def config_from_args(args: argparse.Namespace, spawned: int = 1) -> TrainConfig:
    """The TrainConfig the flags ask for (--set values parsed; nothing resolved yet); `spawned`: the
    processes the launcher will start."""
    overrides = dict(curriculums.parse_override(text) for text in args.overrides)
    return TrainConfig(curriculum=args.curriculum, output_dir=args.output_dir, n_epochs=args.n_epochs,
                       sample_interval=args.sample_interval, model_save_interval=args.model_save_interval,
                       eval_freq=args.eval_freq, eval_dir=args.eval_dir, eval_metrics=args.eval_metrics,
                       load_dir=args.load_dir, resume=args.resume, set_step=args.set_step, max_steps=args.max_steps,
                       num_workers=args.num_workers, precision=args.precision, log_interval=args.log_interval,
                       seed=args.seed, device=args.device, progress=not args.no_progress, compile=args.compile,
                       keep_freed_memory=args.keep_freed_memory, curriculum_overrides=overrides,
                       allow_curriculum_change=args.allow_curriculum_change, start_over=args.start_over,
                       threads=threads_per_process(args.threads, spawned))


def prepare_run(args: argparse.Namespace, world_size: int, spawned: int = 1) -> tuple:
    """Every check that can fail before a process starts; (the RunSpec all processes get, the state of
    the checkpoint it resumes or None). Writes nothing."""
    check_flags(args)
    check_output_path(args.output_dir)
    spec, resume_state = resolve_run(config_from_args(args, spawned))
    check_run(spec, resume_state, world_size)
    if args.start_over and spec.resume_path and is_inside(spec.resume_path, args.output_dir):
        raise ValueError(f"--start_over moves the files of --output_dir aside, so it cannot also resume "
                         f"{spec.resume_path} from it; copy that checkpoint elsewhere first")
    return spec, resume_state


def is_inside(path, folder) -> bool:
    return Path(folder).resolve() in Path(path).resolve().parents


def global_stage_key_notes(args: argparse.Namespace, spec: RunSpec) -> list:
    """One line for each `--set KEY=VALUE` whose KEY is a per-stage key given without a stage number. As in
    a curriculum file (curriculums.extract_metadata), such a global value replaces the key in every stage:
    applied, and said, because the user may have meant one stage."""
    stages = [str(s) for s in curriculums.stage_boundaries(spec.curriculum)[:-1]]
    notes = []
    for text in args.overrides:
        name, value = curriculums.parse_override(text)
        key = curriculums.KEYS.get(name)
        if key is not None and key.scope == curriculums.STAGE:
            notes.append(f"note: --set {name}={value!r} has no stage number, so it is a global value: {name} is "
                         f"{value!r} in every stage ({', '.join(stages)}); for one stage write --set "
                         f"{stages[0]}.{name}={value!r}")
    return notes


def claim_output_dir(spec: RunSpec) -> RunDirLock:
    """Lock --output_dir for this run (RunDirBusy if another run holds it) and make sure it is this run's:
    a folder with another run's files is refused unless this run continues it (its checkpoint is what
    it resumes), or --start_over (or --resume auto with nothing to resume: a job killed before its first
    checkpoint) moves them aside. OSError: the folder cannot be written."""
    config = spec.config
    lock = RunDirLock(config.output_dir).acquire()
    try:
        continuing = spec.resume_path is not None and is_inside(spec.resume_path, config.output_dir)
        if not continuing:
            note = make_room(config.output_dir, config.start_over or config.resume == "auto",
                             advice=f"continue it with --resume auto (or --load_dir {config.output_dir}), ")
            if note:
                print(note, file=sys.stderr)
    except BaseException:
        lock.release()
        raise
    return lock


def _run(rank: int, world_size: int, spec: RunSpec, **kwargs) -> int:
    """One training process; a failure that is not a bug is one `error:` line and exit code 1."""
    try:
        return train(rank, world_size, spec, run_dir_locked=True, **kwargs)
    except (FloatingPointError, CheckpointError, LoaderFailed) as error:  # non-finite training, a bad checkpoint,
        print(f"error: {error}", file=sys.stderr)                        # a data loader worker killed
    except DatasetError as error:  # from a loader worker the message ends with the original one
        print(f"error: {str(error).strip().splitlines()[-1]}", file=sys.stderr)
    except OSError as error:  # a full disk, a folder gone: the checkpoint's own message, or what failed
        print(f"error: {error if error.errno is None else describe_os_error(error)}", file=sys.stderr)
    return 1


def _spawned(rank: int, world_size: int, spec: RunSpec, init_method: str) -> None:
    code = _run(rank, world_size, spec, init_method=init_method)
    if code:
        sys.exit(code)


def spawn_and_wait(world_size: int, spec: RunSpec, init_method: str) -> int:
    """Run `world_size` training processes and wait for them.

    SIGINT/SIGTERM to this launcher are forwarded once to each process, which then saves a
    checkpoint and exits; the launcher keeps waiting (a signal that killed it would let
    torch's spawn wrapper terminate the processes in the middle of their save).
    """
    context = mp.start_processes(_spawned, args=(world_size, spec, init_method), nprocs=world_size,
                                 join=False, start_method="spawn")
    forwarded = False

    def forward(signum, frame):
        nonlocal forwarded
        if forwarded:
            return
        forwarded = True
        print(f"received signal {signum}: asking the {world_size} training processes to save and stop",
              file=sys.stderr)
        for process in context.processes:
            if process.is_alive():
                os.kill(process.pid, signal.SIGTERM)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not context.join():
            pass
    except mp.ProcessExitedException as error:  # the process printed its own error line
        return 1 if error.exit_code and error.exit_code > 0 else 128 - (error.exit_code or 0)
    except mp.ProcessRaisedException as error:
        print(f"error: a training process failed:\n{error}", file=sys.stderr)
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    torchrun = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    if torchrun:
        world_size = int(os.environ["WORLD_SIZE"])
    else:
        world_size = torch.cuda.device_count() if use_cuda else (args.nproc or 1)
    writer = not torchrun or int(os.environ["RANK"]) == 0  # the process that owns --output_dir
    lock = None
    try:
        if use_cuda and world_size == 0:
            raise ValueError("--device cuda, but no CUDA device is visible (CUDA_VISIBLE_DEVICES?); use --device cpu")
        spec, resume_state = prepare_run(args, world_size, spawned=1 if torchrun else world_size)
        port = process_group_port(args.port) if world_size > 1 and not torchrun else None
        if writer:
            for note in global_stage_key_notes(args, spec):
                print(note, file=sys.stderr)
            lock = claim_output_dir(spec)
    except (ValueError, DatasetError, CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"error: --output_dir {args.output_dir}: cannot write there ({describe_os_error(error)})",
              file=sys.stderr)
        return 2

    # A process started here trains on the checkpoint already read; spawned ones read its weights once
    # more (without hashing them again: the RunSpec carries the verified checksum). The lock is held
    # until every process has ended.
    try:
        if torchrun:
            return _run(int(os.environ["RANK"]), world_size, spec, init_method="env://",
                        local_rank=int(os.environ.get("LOCAL_RANK", 0)), resume_state=resume_state)
        if world_size <= 1:
            return _run(0, 1, spec, resume_state=resume_state)
        del resume_state
        return spawn_and_wait(world_size, spec, f"tcp://127.0.0.1:{port}")
    finally:
        if lock is not None:
            lock.release()


if __name__ == "__main__":
    sys.exit(main())
