"""Re-check the fault guarantees of a training run (README, "Reliability"), with real processes and signals.

    python benchmarks/fault_check.py --runs 10                           # both cases, one process
    python benchmarks/fault_check.py --runs 5 --nproc 2 --cases group_sigterm

Every run trains a tiny Synthetic model (`TINY_SETS`, a few seconds a step on one CPU thread) with
`main.py` in a session of its own, then:

* `kill_during_write`: the run saves a checkpoint every step and is SIGKILLed, with its whole process
  group, the moment a checkpoint write's temp file appears (after a random number of completed saves);
  its directory must hold a checkpoint that loads, and `--resume auto` must continue it one more step
  (removing the killed write's temp file).
* `group_sigterm`: the run, with `--num_workers` loader workers, gets SIGTERM to its whole process
  group after step 2, as Slurm at a time limit and systemd send it; it must exit 0 with a checkpoint
  that `--resume auto` continues one more step.

Prints one line per run, a summary line per case and one JSON line; exit code 0 when every run kept a
loadable, resumable checkpoint, else 1. Entry points: `main(argv)`, `kill_during_write`, `group_sigterm`
(tests/test_main.py runs the group case through it).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from utils.checkpoint import STALE_TEMP_GLOB, CheckpointError, load_checkpoint  # noqa: E402

# The Synthetic curriculum made tiny from the command line (stage 0 and globals only).
TINY_SETS = ["hidden_dim=16", "decoder_channels=(16, 16, 8, 8)", "disc_width_factor=0.0625", "synthetic_size=32",
             "0.batch_size=2", "0.num_steps=4", "0.img_size=8", "0.output_size=8", "0.batch_split=1"]
CASES = ("kill_during_write", "group_sigterm")
TIMEOUT_S = 180  # per run, for a loaded machine


def tiny_argv(output_dir, *extra, sets=TINY_SETS) -> list:
    """main.py's arguments for a tiny run into `output_dir` (no workers, grids or periodic saves unless
    `extra` says otherwise: a later flag wins)."""
    argv = ["--curriculum", "Synthetic", "--output_dir", str(output_dir), "--num_workers", "0", "--no_progress",
            "--sample_interval", "0", "--log_interval", "1"]
    for item in sets:
        argv += ["--set", item]
    return argv + list(extra)


@dataclass
class Outcome:
    """What became of one run."""

    ok: bool
    exit_code: Optional[int]
    saved_step: Optional[int]    # the step of the checkpoint left behind (None: none loads)
    saved_world_size: Optional[int]  # the processes that wrote it
    resumed_step: Optional[int]  # the step after `--resume auto` trained one more (None: it failed)
    output: str                  # the killed/stopped run's stdout and stderr
    detail: str = ""


def start_training(argv: list) -> subprocess.Popen:
    """main.py in a session (process group) of its own, one torch thread, output captured."""
    return subprocess.Popen([sys.executable, str(ROOT / "main.py"), *argv], cwd=ROOT,
                            env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)


def steps_logged(run: Path) -> int:
    try:
        return sum(1 for line in (run / "metrics.jsonl").read_text().splitlines() if '"eval"' not in line)
    except OSError:
        return 0


def finish(proc: subprocess.Popen, timeout: float) -> str:
    """Wait for `proc` (SIGKILL its group after `timeout`); its output."""
    try:
        return proc.communicate(timeout=timeout)[0].decode(errors="replace")
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return proc.communicate()[0].decode(errors="replace") + "\n(fault_check: timed out, killed)"


def checkpoint_step(run: Path) -> Optional[int]:
    return saved_checkpoint(run)[0]


def saved_checkpoint(run: Path) -> tuple:
    """(step, world_size) of the run directory's checkpoint.pth, (None, None) if none loads."""
    try:
        state = load_checkpoint(run)
    except CheckpointError:
        return None, None
    return int(state["step"]), state.get("world_size")


def resume_one_step(run: Path, step: int) -> Optional[int]:
    """`main.py --resume auto` one step beyond `step`, in this process; the checkpoint's step after it."""
    import main

    if main.main(tiny_argv(run, "--resume", "auto", "--max_steps", str(step + 1))) != 0:
        return None
    return checkpoint_step(run)


def kill_during_write(run: Path, rng: random.Random, timeout: float = TIMEOUT_S) -> Outcome:
    """SIGKILL the run's process group while it writes a checkpoint (after 0-3 completed saves)."""
    proc = start_training(tiny_argv(run, "--sample_interval", "1", "--max_steps", "100000"))
    skip, seen, mid_write = rng.randint(0, 3), set(), False
    deadline = time.time() + timeout
    try:
        while proc.poll() is None and time.time() < deadline:
            temps = {path.name for path in run.glob(STALE_TEMP_GLOB)} if (run / "checkpoint.pth").exists() else set()
            if temps - seen:
                if len(seen) >= skip:
                    time.sleep(rng.uniform(0.0, 0.02))  # into the write (a tiny checkpoint takes ~10-100 ms)
                    os.killpg(proc.pid, signal.SIGKILL)
                    mid_write = True
                    break
                seen |= temps
            time.sleep(0.0005)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    output = finish(proc, 30)
    left_temp = any(run.glob(STALE_TEMP_GLOB))
    step, world_size = saved_checkpoint(run)
    resumed = resume_one_step(run, step) if step is not None else None
    cleaned = not any(run.glob(STALE_TEMP_GLOB))
    ok = mid_write and step is not None and resumed == step + 1 and cleaned
    detail = (f"killed {'while writing (its temp file was left behind)' if left_temp else 'as a write began'}"
              if mid_write else "never saw a write (timed out or the run ended)")
    return Outcome(ok, proc.returncode, step, world_size, resumed, output, detail)


def group_signal(run: Path, signals=(signal.SIGTERM,), nproc: int = 1, num_workers: int = 2, after_step: int = 2,
                 timeout: float = TIMEOUT_S, launcher_first: bool = False) -> Outcome:
    """`signals` (one after the other) to the run's whole process group after `after_step` steps (with
    `launcher_first`, the first also to the launcher alone just before, as a user's kill and then the
    cluster's); then resume it one step in this process."""
    extra = ["--num_workers", str(num_workers), "--max_steps", "100000"]
    if nproc > 1:
        extra += ["--nproc", str(nproc), "--device", "cpu"]
    proc = start_training(tiny_argv(run, *extra))
    deadline = time.time() + timeout
    while proc.poll() is None and steps_logged(run) < after_step and time.time() < deadline:
        time.sleep(0.05)
    if proc.poll() is None:
        if launcher_first:
            proc.send_signal(signals[0])
        for sig in signals:
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:  # the run already ended
                break
    output = finish(proc, max(deadline - time.time(), 30))
    step, world_size = saved_checkpoint(run)
    resumed = resume_one_step(run, step) if step is not None else None
    ok = proc.returncode == 0 and step is not None and step >= after_step and resumed == step + 1
    names = "+".join(signal.Signals(sig).name for sig in signals)
    return Outcome(ok, proc.returncode, step, world_size, resumed, output, f"{names} to the group after step "
                                                                            f"{after_step}")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=5, help="runs of each case")
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {','.join(CASES)}")
    p.add_argument("--nproc", type=int, default=1, help="group_sigterm: training processes (--nproc, gloo on CPU)")
    p.add_argument("--num_workers", type=int, default=2, help="group_sigterm: data loader workers per process")
    p.add_argument("--output_dir", default="runs/fault_check", help="folder for the runs' directories (emptied)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random kill points")
    args = p.parse_args(argv)
    cases = [c for c in args.cases.split(",") if c]
    unknown = sorted(set(cases) - set(CASES))
    if unknown or args.runs < 1 or args.nproc < 1 or args.num_workers < 0:
        p.error(f"unknown cases {unknown}" if unknown else "--runs and --nproc must be at least 1, "
                                                         "--num_workers at least 0")
    args.cases = cases
    return args


def main(argv=None) -> int:
    import shutil

    args = parse_args(argv)
    root = Path(args.output_dir)
    shutil.rmtree(root, ignore_errors=True)
    rng = random.Random(args.seed)
    summary = {}
    for case in args.cases:
        passed = 0
        for index in range(args.runs):
            run = root / f"{case}_{index}"
            if case == "kill_during_write":
                outcome = kill_during_write(run, rng)
            else:
                outcome = group_signal(run, nproc=args.nproc, num_workers=args.num_workers)
            passed += outcome.ok
            print(f"{case} {index + 1}/{args.runs}: {'ok' if outcome.ok else 'FAILED'}: {outcome.detail}; exit code "
                  f"{outcome.exit_code}, checkpoint of step {outcome.saved_step}, resumed to step "
                  f"{outcome.resumed_step}", flush=True)
            if not outcome.ok:
                print(outcome.output[-3000:], flush=True)
        summary[case] = {"runs": args.runs, "kept_a_resumable_checkpoint": passed}
        what = ("kill -9 during a checkpoint write" if case == "kill_during_write" else
                f"SIGTERM to the process group ({args.nproc} process(es), {args.num_workers} loader workers each)")
        print(f"{what}: {passed}/{args.runs} runs left a loadable checkpoint that --resume auto continued", flush=True)
    print(json.dumps({"fault_check": summary, "nproc": args.nproc, "num_workers": args.num_workers}))
    return 0 if all(s["kept_a_resumable_checkpoint"] == s["runs"] for s in summary.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
