"""Re-check the fault guarantees of a training run (docs/TRAINING.md, "Reliability"), with real processes and signals.

    python benchmarks/fault_check.py --runs 10                           # every case, one process
    python benchmarks/fault_check.py --runs 5 --nproc 2 --cases group_sigterm
    python benchmarks/fault_check.py --runs 1 --cases import_overwrite,render_overwrite,viewer_bad_host

Every run trains a tiny Synthetic model (`TINY_SETS`, a few seconds a step on one CPU thread) with
`main.py` in a session of its own, then:

* `kill_during_write`: the run saves a checkpoint every step and is SIGKILLed, with its whole process
  group, the moment a checkpoint write's temp file appears (after a random number of completed saves);
  its directory must hold a checkpoint that loads, and `--resume auto` must continue it one more step
  (removing the killed write's temp file).
* `group_sigterm`: the run, with `--num_workers` loader workers, gets SIGTERM to its whole process
  group after step 2, as Slurm at a time limit and systemd send it; it must exit 0 with a checkpoint
  that `--resume auto` continues one more step.

The tools around training are probed too (issue 32), each case after a one-step tiny run:

* `import_overwrite`: `import_checkpoint.py --output` the run's trained `checkpoint.pth`, and `--output`
  one of the published files it imports (with `--force`): both must be refused (exit 2, one `error:`
  line) with the files unchanged.
* `render_overwrite`: `render_multiview_image.py` and `extract_shapes.py` into a folder that holds an
  earlier run's `image_0.png` and `shape_0.ply` (and the user's `notes.txt`): both must be refused (exit
  2, one `error: --output_dir` line naming the file and `--overwrite`) with every file unchanged; with
  `--overwrite` the render replaces its picture and leaves the other files alone.
* `viewer_bad_host`: `viewer.py --host` 999.1.1.1 (not an address) and 192.0.2.1 (an address of another
  machine): each must end with exit 2 and one `error: --host` line within HANG_TIMEOUT_S, where it
  once hung in silence (viser took the bind error for a busy port and tried the next port forever).

Prints one line per run, a summary line per case and one JSON line; exit code 0 when every run kept a
loadable, resumable checkpoint (the tool cases: behaved), else 1. Entry points: `main(argv)`,
`kill_during_write`, `group_sigterm` (tests/test_main.py runs the group case through it),
`import_overwrite`, `render_overwrite`, `viewer_bad_host`.
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
TOOL_CASES = ("import_overwrite", "render_overwrite", "viewer_bad_host")
CASES = ("kill_during_write", "group_sigterm") + TOOL_CASES
TIMEOUT_S = 180  # per run, for a loaded machine
HANG_TIMEOUT_S = 60  # a refused --host takes seconds (loading torch); more is the old silent hang
PUBLISHED = ROOT / "tests" / "fixtures" / "published_mvcgan"  # the published code's files, tiny
BAD_HOSTS = ("999.1.1.1", "192.0.2.1")  # not an IP address; TEST-NET-1, an address no machine here has


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


def run_script(script: str, *args, timeout: float = TIMEOUT_S) -> tuple:
    """(exit code or None when it ran past `timeout` and was killed, stdout and stderr, seconds) of a
    project script in a session of its own, one torch thread."""
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, str(ROOT / script), *map(str, args)], cwd=ROOT,
                            env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    output = finish(proc, timeout)
    timed_out = output.endswith("(fault_check: timed out, killed)")
    return (None if timed_out else proc.returncode), output, time.monotonic() - started


def refused(code, output: str, start: str) -> bool:
    """Exit code 2 with one `error:` line, which begins with `start`."""
    errors = [line for line in output.splitlines() if "error:" in line]
    return code == 2 and len(errors) == 1 and errors[0].startswith(start)


def trained_run(run: Path) -> bool:
    """A one-step tiny run in `run` (in this process); whether it ended with exit code 0."""
    import main

    return main.main(tiny_argv(run, "--max_steps", "1")) == 0


def import_overwrite(run: Path) -> Outcome:
    """import_checkpoint.py pointed at a trained checkpoint.pth, then at its own input (with --force)."""
    import shutil

    if not trained_run(run):
        return Outcome(False, None, None, None, None, "", "the tiny run did not train")
    published = run / "published"
    shutil.copytree(PUBLISHED, published)
    outputs, failed = [], []
    for target, extra in ((run / "checkpoint.pth", []), (published / "generator.pth", ["--force"])):
        before = target.read_bytes()
        code, output, _ = run_script("import_checkpoint.py", "--path", published, "--curriculum", "FFHQ",
                                     "--output", target, *extra)
        outputs.append(output)
        if not (refused(code, output, f"error: --output {target}") and target.read_bytes() == before):
            failed.append(f"--output {target.name} {' '.join(extra)}: exit code {code}, "
                          f"{'unchanged' if target.read_bytes() == before else 'REPLACED'}")
    detail = "; ".join(failed) or "a trained checkpoint.pth and the import's own generator.pth (--force) kept"
    return Outcome(not failed, 2 if not failed else None, checkpoint_step(run), None, None, "\n".join(outputs), detail)


def render_overwrite(run: Path) -> Outcome:
    """render_multiview_image.py and extract_shapes.py into a folder holding files of their names: refused,
    every file unchanged; the render with --overwrite replaces only its own names."""
    if not trained_run(run):
        return Outcome(False, None, None, None, None, "", "the tiny run did not train")
    folder = run / "renders"
    folder.mkdir()
    for name, text in (("image_0.png", "an earlier render"), ("shape_0.ply", "an earlier mesh"),
                       ("notes.txt", "the user's")):
        (folder / name).write_text(text)
    state = lambda: {path.name: (path.read_bytes(), path.stat().st_mtime_ns) for path in folder.iterdir()}
    before = state()
    common = ["--path", run, "--output_dir", folder, "--seeds", "0", "--threads", "1", "--device", "cpu"]
    outputs, failed = [], []
    for script, name, extra in (("render_multiview_image.py", "image_0.png", []),
                                ("extract_shapes.py", "shape_0.ply", ["--voxel_resolution", "16"])):
        code, output, _ = run_script(script, *common, *extra)
        outputs.append(output)
        if not (refused(code, output, f"error: --output_dir {folder} already holds {name}") and "--overwrite" in output
                and state() == before):
            failed.append(f"{script} onto {name}: exit code {code}, {'unchanged' if state() == before else 'REPLACED'}")
    code, output, _ = run_script("render_multiview_image.py", *common, "--overwrite")
    outputs.append(output)
    after = state()
    if code != 0 or after["image_0.png"] == before["image_0.png"] or any(
            after[name] != before[name] for name in before if name != "image_0.png"):
        failed.append(f"render_multiview_image.py --overwrite: exit code {code}, image_0.png "
                      f"{'replaced' if after['image_0.png'] != before['image_0.png'] else 'kept'}, the other files "
                      f"{'kept' if all(after[n] == before[n] for n in before if n != 'image_0.png') else 'CHANGED'}")
    detail = "; ".join(failed) or ("an earlier image_0.png and shape_0.ply kept by both scripts; --overwrite replaced "
                                   "the picture alone")
    return Outcome(not failed, 2 if not failed else None, None, None, None, "\n".join(outputs), detail)


def viewer_bad_host(run: Path) -> Outcome:
    """viewer.py --host of each BAD_HOSTS: one error line and exit 2 within HANG_TIMEOUT_S."""
    if not trained_run(run):
        return Outcome(False, None, None, None, None, "", "the tiny run did not train")
    outputs, failed, slowest = [], [], 0.0
    for host in BAD_HOSTS:
        code, output, seconds = run_script("viewer.py", "--path", run, "--host", host, "--threads", "1",
                                           "--output_dir", run / "viewer", timeout=HANG_TIMEOUT_S)
        outputs.append(output)
        slowest = max(slowest, seconds)
        if not refused(code, output, f"error: --host {host}"):
            failed.append(f"--host {host}: " + ("hung (killed)" if code is None else f"exit code {code}"))
    detail = "; ".join(failed) or f"--host {', '.join(BAD_HOSTS)} refused, slowest in {slowest:.1f} s"
    return Outcome(not failed, 2 if not failed else None, None, None, None, "\n".join(outputs), detail)


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
            elif case == "group_sigterm":
                outcome = group_signal(run, nproc=args.nproc, num_workers=args.num_workers)
            else:
                outcome = TOOL_CHECKS[case](run)
            passed += outcome.ok
            line = f"{case} {index + 1}/{args.runs}: {'ok' if outcome.ok else 'FAILED'}: {outcome.detail}"
            if case not in TOOL_CASES:
                line += (f"; exit code {outcome.exit_code}, checkpoint of step {outcome.saved_step}, resumed to step "
                         f"{outcome.resumed_step}")
            print(line, flush=True)
            if not outcome.ok:
                print(outcome.output[-3000:], flush=True)
        if case in TOOL_CASES:
            summary[case] = {"runs": args.runs, "behaved": passed}
            what = {"import_overwrite": "import_checkpoint.py --output a trained checkpoint or its own input",
                    "render_overwrite": "render_multiview_image.py, extract_shapes.py onto an earlier run's files",
                    "viewer_bad_host": f"viewer.py --host {' / '.join(BAD_HOSTS)}"}[case]
            print(f"{what}: {passed}/{args.runs} runs refused it with one error line, exit code 2, nothing "
                  f"replaced and nothing hung", flush=True)
            continue
        summary[case] = {"runs": args.runs, "kept_a_resumable_checkpoint": passed}
        what = ("kill -9 during a checkpoint write" if case == "kill_during_write" else
                f"SIGTERM to the process group ({args.nproc} process(es), {args.num_workers} loader workers each)")
        print(f"{what}: {passed}/{args.runs} runs left a loadable checkpoint that --resume auto continued", flush=True)
    print(json.dumps({"fault_check": summary, "nproc": args.nproc, "num_workers": args.num_workers}))
    return 0 if all(s.get("kept_a_resumable_checkpoint", s.get("behaved")) == s["runs"] for s in summary.values()) else 1


TOOL_CHECKS = {"import_overwrite": import_overwrite, "render_overwrite": render_overwrite,
               "viewer_bad_host": viewer_bad_host}


if __name__ == "__main__":
    sys.exit(main())
