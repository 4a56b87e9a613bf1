"""The GPU acceptance run (issue 24): one command that proves the CUDA path on a lent GPU.

    python benchmarks/gpu_acceptance.py --output_dir $OUT      # on one GPU: at most --budget_s (480 s)
    python benchmarks/gpu_acceptance.py --smoke                 # the same plan on CPU, tiny sizes, < 1 min

Four parts, in order, each step a subprocess with its own time box, so a crash or a hang in
one still leaves the others' results:

1. `tests`: the device-aware tests (`pytest -m device_aware --device cuda`, tests/conftest.py):
   the field against its formula for every impl, fp16/bf16 autocast, a whole train_step at each
   precision, fp16 overflows and the loss-scale floor, a checkpoint round trip with the CUDA RNG.
2. `train`: `main.py --curriculum Synthetic` for `--train_steps` steps in fp16 and in bf16: finite
   losses, no streak of skipped steps, grids written (from the run's metrics.jsonl).
3. `bench`: `bench_step.py` at the paper's stage-0 per-GPU batch, 56 in 4 chunks of 14, in fp16
   and bf16, 56 in one chunk (fp16) if it fits, then fp16 and bf16 with `--compile`: seconds per
   step and `max_memory_allocated`; the fp16 pair recalibrates utils/memory_model.py.
4. `learn`: 3D learning at the paper's NeRF size: `Synthetic` with a 64 px NeRF and the sphere
   prior off, for the time that remains (stopped by SIGTERM, which saves a checkpoint), then
   `fid_evaluation.py --metrics synthetic,mvc` and the sphere prior's score at the same poses:
   does the depth error on the true foreground beat the flat wall and the prior? Grids and a
   depth row come back as pictures.

`--output_dir` receives `gpu_acceptance.json` (the summary, also printed last) and at most six
small PNGs; run directories and logs go to `--work_dir`. Each step records its status (`ok`,
`failed` with the last lines of its output, `timed_out`, `stopped` for training that the time box
ended as planned, or `skipped`), its seconds and what it measured. Steps are cut short or skipped
rather than eat into the learning part's minimum (`--learn_min_s`). Entry point: `main(argv)`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PYTHON = sys.executable
SUMMARY_NAME = "gpu_acceptance.json"
WORK_FOLDERS = ("logs", "train_fp16", "train_bf16", "learn", "learn_render")  # what the plan writes in --work_dir
TAIL_LINES = 25          # lines of a failed step's output kept in the summary
MAX_SKIPPED_STREAK = 10  # a training run with this many skipped steps in a row fails its check


@dataclass
class Step:
    """One subprocess of the plan."""

    name: str
    part: str
    command: List[str]
    time_box: float                       # seconds (cut to what the budget allows when it starts)
    graceful: bool = False                # at the time box: SIGTERM (training saves and stops), not a failure
    grace_s: float = 60.0                 # after SIGTERM, seconds before SIGKILL
    check: Optional[Callable[["Step", dict], dict]] = None  # reads the outputs: {"results": ..., "failed": [...]}
    check_failures: bool = False          # run `check` on a failed step too (what failed, out of memory)
    skip_reason: Optional[str] = None     # planned skip (e.g. --compile in --smoke)
    reserve_for_later: bool = True        # keep the learning part's minimum free (all but the learn steps)
    env: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------------- running steps
def _tail(path: Path, lines: int = TAIL_LINES) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _stop_group(process: subprocess.Popen, sig: int) -> None:
    """Send `sig` to the process group of `process` (it was started in a session of its own)."""
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass


def run_step(step: Step, log_dir: Path, time_box: Optional[float] = None) -> dict:
    """Run `step` within its time box; its outcome (status, seconds, returncode, log, error tail)."""
    time_box = step.time_box if time_box is None else time_box
    log = log_dir / f"{step.name}.log"
    started = time.monotonic()
    outcome = {"status": "ok", "time_box_s": round(time_box, 1), "log": str(log)}
    with open(log, "w") as handle:
        handle.write("$ " + " ".join(step.command) + "\n")
        handle.flush()
        try:
            process = subprocess.Popen(step.command, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT,
                                       start_new_session=True, env={**os.environ, **step.env})
        except OSError as error:
            return {**outcome, "status": "failed", "seconds": 0.0, "error_tail": str(error)}
        try:
            returncode = process.wait(timeout=max(time_box, 0.01))
        except subprocess.TimeoutExpired:
            if step.graceful:  # the training process only: its loader workers must live until it has saved
                os.kill(process.pid, signal.SIGTERM)
            else:
                _stop_group(process, signal.SIGKILL)
            try:
                returncode = process.wait(timeout=step.grace_s if step.graceful else 10)
            except subprocess.TimeoutExpired:
                _stop_group(process, signal.SIGKILL)
                returncode = process.wait()
                outcome["killed"] = True
            outcome["status"] = "stopped" if step.graceful and returncode == 0 else "timed_out"
        finally:
            if process.poll() is None:  # an exception above (e.g. KeyboardInterrupt): leave nothing behind
                _stop_group(process, signal.SIGKILL)
                process.wait()
    outcome.update(seconds=round(time.monotonic() - started, 1), returncode=returncode)
    if outcome["status"] == "ok" and returncode != 0:
        outcome["status"] = "failed"
    if outcome["status"] in ("failed", "timed_out"):
        outcome["error_tail"] = _tail(log)
    return outcome


def run_plan(steps: List[Step], work_dir: Path, budget_s: float, learn_reserve_s: float = 0.0,
             on_step: Callable[[str, dict], None] = lambda name, outcome: None) -> dict:
    """Run the steps in order within `budget_s` seconds in all; {step name: outcome}. A step that
    reserves for later may not run into the last `learn_reserve_s` seconds: its box is cut, or it is
    skipped when under 5 s (or under its own box) remain. A failing step never stops the plan."""
    log_dir = work_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + budget_s
    outcomes = {}
    for step in steps:
        if step.skip_reason:
            outcome = {"status": "skipped", "reason": step.skip_reason, "seconds": 0.0}
        else:
            left = deadline - time.monotonic() - (learn_reserve_s if step.reserve_for_later else 0.0)
            box = min(step.time_box, left)
            if left < min(5.0, step.time_box):
                outcome = {"status": "skipped", "reason": f"no time left in the {budget_s:.0f} s budget",
                           "seconds": 0.0}
            else:
                outcome = run_step(step, log_dir, box)
                if box < step.time_box:
                    outcome["time_box_cut_from_s"] = step.time_box
                if step.check is not None and (outcome["status"] in ("ok", "stopped") or
                                               step.check_failures and outcome["status"] == "failed"):
                    try:
                        checked = step.check(step, outcome)
                    except Exception as error:  # a check that cannot read the outputs is a failed step
                        checked = {"failed": [f"reading the outputs failed: {type(error).__name__}: {error}"]}
                    outcome.update(checked.get("results", {}))
                    if checked.get("failed"):
                        outcome["status"] = "failed"
                        outcome["failed_checks"] = checked["failed"]
        outcomes[step.name] = {"part": step.part, **outcome}
        on_step(step.name, outcomes[step.name])
    return outcomes


# ------------------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class Sizes:
    """What differs between a GPU run and --smoke."""

    device: str
    train_steps: int
    train_set: tuple          # --set values of the training parts
    bench_args: tuple         # bench_step size flags
    learn_set: tuple          # --set values of the learning run
    learn_max_steps: int
    learn_min_s: float        # the learning run's minimum training time
    score_args: tuple         # fid_evaluation / prior sample counts
    test_args: tuple          # extra pytest arguments
    boxes: dict               # time boxes by kind of step
    grace_s: float


TINY_WIDTHS = ("hidden_dim=16", "decoder_channels=(16,16,8,8)", "disc_width_factor=0.0625", "synthetic_size=16")


def gpu_sizes(args) -> Sizes:
    return Sizes(
        device="cuda", train_steps=args.train_steps, train_set=(),
        bench_args=("--batch_size", "56", "--img_size", "64", "--num_steps", "16", "--output_size", "64",
                    "--iterations", "2"),
        # the paper's NeRF size for the whole run (globals win over the stages: both stages become 64 px)
        learn_set=("img_size=64", "output_size=64", "sphere_prior_density=0.0"),
        learn_max_steps=args.learn_max_steps, learn_min_s=args.learn_min_s, score_args=(),
        test_args=("--device", "cuda"),
        boxes={"tests": 80, "train": 45, "bench": 40, "bench_compile": 75, "score": 60, "render": 30},
        grace_s=60)


def smoke_sizes(args) -> Sizes:
    tiny_stage = ("0.batch_size=2", "0.img_size=8", "0.output_size=8", "0.num_steps=4") + TINY_WIDTHS
    return Sizes(
        device="cpu", train_steps=2, train_set=tiny_stage,
        bench_args=("--curriculum", "Synthetic", "--batch_size", "2", "--img_size", "8", "--num_steps", "4",
                    "--output_size", "8", "--iterations", "1", "--threads", "1"),
        # globals, as the GPU plan sets its 64 px: the tiny sizes for every stage
        learn_set=("batch_size=2", "img_size=8", "output_size=8", "num_steps=4", *TINY_WIDTHS,
                   "sphere_prior_density=0.0"), learn_max_steps=2, learn_min_s=5,
        score_args=("--num_synthetic", "4", "--num_mvc", "2"),
        # one quick device-aware test: the smoke proves the script, the suite proves the tests
        test_args=("--device", "cpu", "tests/test_train.py", "-k", "checkpoint_restores"),
        boxes={"tests": 40, "train": 40, "bench": 40, "bench_compile": 40, "score": 40, "render": 40},
        grace_s=20)


def _records(run_dir: Path) -> list:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _last_json_line(log: Path) -> dict:
    for line in reversed(Path(log).read_text(errors="replace").splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise ValueError(f"no JSON line in {log}")


def check_tests(step: Step, outcome: dict) -> dict:
    text = Path(outcome["log"]).read_text(errors="replace")
    summary = next((line.strip("= ") for line in reversed(text.splitlines()) if " in " in line and
                    any(word in line for word in ("passed", "failed", "error", "skipped"))), "")
    failed_tests = [line.split(" ", 1)[1].split(" - ")[0] for line in text.splitlines()
                    if line.startswith(("FAILED ", "ERROR "))]
    return {"results": {"pytest": summary, "failed_tests": failed_tests}}


def check_training(run_dir: Path, output_dir: Path, picture: Optional[str]) -> Callable:
    """The check of a training step: finite losses, no streak of skipped steps, grids written."""

    def check(step: Step, outcome: dict) -> dict:
        records = [r for r in _records(run_dir) if "d_loss" in r]
        failed = []
        if not records:
            return {"failed": ["no training steps in metrics.jsonl"]}
        nonfinite = [r["step"] for r in records
                     if not all(isinstance(r[k], (int, float)) and math.isfinite(r[k])
                                for k in ("d_loss", "g_loss", "photometric"))]
        # skipped steps are always logged: a streak is skipped records at consecutive steps
        streak = longest = 0
        previous = None
        for r in records:
            if not r["skipped"]:
                streak = 0
            else:
                streak = streak + 1 if streak and r["step"] == previous + 1 else 1
            previous = r["step"]
            longest = max(longest, streak)
        grids = sorted(run_dir.glob("*_fixed_ema.png"), key=lambda p: int(p.name.split("_")[0]))
        if nonfinite:
            failed.append(f"non-finite losses at steps {nonfinite[:5]}")
        if longest >= MAX_SKIPPED_STREAK:
            failed.append(f"{longest} skipped steps in a row")
        if not grids:
            failed.append("no sample grid written")
        elif picture:
            shutil.copyfile(grids[-1], output_dir / picture)
        seconds = sorted(r["sec_per_step"] for r in records[1:]) or [records[0]["sec_per_step"]]
        last = records[-1]
        return {"failed": failed, "results": {
            "steps": last["step"], "sec_per_step_median": round(seconds[len(seconds) // 2], 4),
            "skipped_steps": sum(bool(r["skipped"]) for r in records), "longest_skipped_streak": longest,
            "last_losses": {k: last[k] for k in ("d_loss", "g_loss", "photometric")},
            "grid": grids[-1].name if grids else None}}

    return check


def check_bench(step: Step, outcome: dict) -> dict:
    if outcome["status"] == "failed":  # e.g. 56 images in one chunk: did the GPU run out of memory?
        text = Path(outcome["log"]).read_text(errors="replace")
        return {"results": {"out_of_memory": "OutOfMemoryError" in text or "out of memory" in text}}
    record = _last_json_line(Path(outcome["log"]))
    keys = ("sec_per_step_best", "sec_per_step_median", "cuda_max_allocated_gb", "cuda_max_reserved_gb",
            "peak_rss_gb", "modelled_peak_gb", "batch_size", "batch_split_used", "precision", "compile",
            "field_impl_used", "first_step_losses", "img_size", "num_steps", "output_size", "hidden_dim", "batch_split")
    losses = record["first_step_losses"]
    failed = [f"non-finite first-step {k}" for k, v in losses.items() if not math.isfinite(v)]
    return {"failed": failed, "results": {"bench": {k: record[k] for k in keys if k in record}}}


def check_score(step: Step, outcome: dict) -> dict:
    record = _last_json_line(Path(outcome["log"]))
    keys = [k for k in record if k.startswith(("synthetic_", "mvc")) and isinstance(record[k], (int, float))]
    return {"results": {"scores": {k: record[k] for k in keys}, "step": record.get("step")}}


def check_render(render_dir: Path, output_dir: Path) -> Callable:
    def check(step: Step, outcome: dict) -> dict:
        copied, failed = [], []
        for source, target in (("image_0.png", "learn_multiview.png"), ("depth_0.png", "learn_depth.png")):
            if (render_dir / source).exists():
                shutil.copyfile(render_dir / source, output_dir / target)
                copied.append(target)
            else:
                failed.append(f"{source} not written")
        return {"failed": failed, "results": {"pictures": copied}}

    return check


def check_learning(run_dir: Path, output_dir: Path) -> Callable:
    train_check = check_training(run_dir, output_dir, "learn_fixed_ema.png")

    def check(step: Step, outcome: dict) -> dict:
        checked = train_check(step, outcome)
        tilted = sorted(run_dir.glob("*_tilted_ema.png"), key=lambda p: int(p.name.split("_")[0]))
        if tilted:
            shutil.copyfile(tilted[-1], output_dir / "learn_tilted_ema.png")
        checked["failed"] = [f for f in checked["failed"] if f != "no sample grid written"]  # stopped early
        if not (run_dir / "checkpoint.pth").exists():
            checked["failed"].append("no checkpoint.pth to score")
        return checked

    return check


def build_plan(args, sizes: Sizes, work_dir: Path, output_dir: Path) -> List[Step]:
    py = [PYTHON]
    steps = [Step("tests", "tests", py + ["-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", "-m",
                                          "device_aware", *sizes.test_args],
                  sizes.boxes["tests"], check=check_tests, check_failures=True)]

    # On the CPU every precision trains in fp32: --smoke runs the fp16 steps only.
    same_as_fp16 = "--smoke: on the CPU bf16 trains in fp32, as the fp16 step did" if args.smoke else None

    # 2. mixed-precision training on the embedded curriculum
    for precision in ("fp16", "bf16"):
        run_dir = work_dir / f"train_{precision}"
        interval = max(1, sizes.train_steps // 3)
        command = py + ["main.py", "--curriculum", "Synthetic", "--device", sizes.device, "--precision", precision,
                        "--output_dir", str(run_dir), "--max_steps", str(sizes.train_steps),
                        "--sample_interval", str(interval), "--model_save_interval", "0", "--log_interval", "1",
                        "--no_progress", "--num_workers", "0" if args.smoke else "4", "--seed", "0"]
        for value in sizes.train_set:
            command += ["--set", value]
        steps.append(Step(f"train_{precision}", "train", command, sizes.boxes["train"], graceful=True,
                          grace_s=sizes.grace_s,
                          check=check_training(run_dir, output_dir, f"train_{precision}_fixed_ema.png"),
                          skip_reason=same_as_fp16 if precision == "bf16" else None))

    # 3. the paper's stage-0 batch: 56 per GPU in 4 chunks of 14
    bench = py + ["benchmarks/bench_step.py", "--device", sizes.device, *sizes.bench_args]
    compile_skip = "--compile is for CUDA (on CPU Inductor spends minutes compiling C++)" if args.smoke else None
    for name, extra, kind, skip in (
            ("bench_fp16_split4", ["--precision", "fp16", "--batch_split", "4" if not args.smoke else "2"], "bench",
             None),
            ("bench_bf16_split4", ["--precision", "bf16", "--batch_split", "4" if not args.smoke else "2"], "bench",
             same_as_fp16),
            ("bench_fp16_split1", ["--precision", "fp16", "--batch_split", "1"], "bench", None),
            ("bench_fp16_split4_compile", ["--precision", "fp16", "--batch_split", "4", "--compile"], "bench_compile",
             compile_skip),
            ("bench_bf16_split4_compile", ["--precision", "bf16", "--batch_split", "4", "--compile"], "bench_compile",
             compile_skip)):
        steps.append(Step(name, "bench", bench + extra, sizes.boxes[kind], check=check_bench, check_failures=True,
                          skip_reason=skip))

    # 4. 3D learning at the paper's NeRF size, for the time that remains
    learn_dir, render_dir = work_dir / "learn", work_dir / "learn_render"
    command = py + ["main.py", "--curriculum", "Synthetic", "--device", sizes.device, "--precision",
                    args.learn_precision, "--output_dir", str(learn_dir), "--max_steps", str(sizes.learn_max_steps),
                    "--sample_interval", str(args.learn_sample_interval if not args.smoke else 1),
                    "--model_save_interval", "0", "--log_interval", "10" if not args.smoke else "1",
                    # the 64 px heads are ray-cast on the CPU: enough loader workers to keep the GPU busy
                    "--no_progress", "--num_workers", "0" if args.smoke else "8", "--seed", "0"]
    for value in sizes.learn_set:
        command += ["--set", value]
    steps.append(Step("learn_train", "learn", command, math.inf, graceful=True, grace_s=sizes.grace_s,
                      check=check_learning(learn_dir, output_dir), reserve_for_later=False))
    score = ["--device", sizes.device, *sizes.score_args]
    steps.append(Step("learn_score", "learn", py + ["fid_evaluation.py", "--path", str(learn_dir), "--metrics",
                                                    "synthetic,mvc", "--no_append", "--num_workers", "0", *score],
                      sizes.boxes["score"], check=check_score, reserve_for_later=False))
    steps.append(Step("learn_prior", "learn", py + [str(Path(__file__).resolve()), "--prior_baseline", str(learn_dir),
                                                    *score], sizes.boxes["score"], check=check_score,
                      reserve_for_later=False))
    steps.append(Step("learn_render", "learn", py + ["render_multiview_image.py", "--path", str(learn_dir),
                                                     "--output_dir", str(render_dir), "--depth", "--seeds", "0",
                                                     "--device", sizes.device],
                      sizes.boxes["render"], check=check_render(render_dir, output_dir), reserve_for_later=False))
    return steps


def learn_time_boxes(steps: List[Step]) -> float:
    """Seconds the learning part keeps after its training: its scoring and rendering boxes."""
    return sum(s.time_box for s in steps if s.part == "learn" and s.name != "learn_train")


# ------------------------------------------------------------------------------------- the answers
def learning_answers(outcomes: dict) -> dict:
    """Does the learned depth beat a flat wall and the sphere prior (depth error on the true foreground)?"""
    scores = outcomes.get("learn_score", {}).get("scores", {})
    prior = outcomes.get("learn_prior", {}).get("scores", {})
    learned, wall = scores.get("synthetic_depth_l1_fg"), scores.get("synthetic_depth_l1_plane")
    sphere = prior.get("synthetic_depth_l1_fg_prior")
    answers = {"depth_error_learned": learned, "depth_error_flat_wall": wall, "depth_error_sphere_prior": sphere,
               "silhouette_iou": scores.get("synthetic_iou"), "silhouette_iou_blob": scores.get("synthetic_iou_blob"),
               "pixel_kid": scores.get("synthetic_kid")}
    if learned is not None and wall is not None:
        answers["beats_flat_wall"] = learned < wall
    if learned is not None and sphere is not None:
        answers["beats_sphere_prior"] = learned < sphere
    return answers


def _jsonable(value):
    """`value` with NaN and infinities as None (strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


ENVIRONMENT_PROBE = """
import json, sys, torch
info = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda_available": torch.cuda.is_available()}
if torch.cuda.is_available():
    properties = torch.cuda.get_device_properties(0)
    info.update(gpu=properties.name, gpu_memory_gb=round(properties.total_memory / 2 ** 30, 1),
                cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
print(json.dumps(info))
"""


def environment(device: str) -> dict:
    """Versions, the GPU and the commit. Read in a subprocess: a CUDA context in this process would hold
    GPU memory for the whole run, which the steps' memory measurements would then lack."""
    info = {"device": device}
    try:
        probe = subprocess.run([PYTHON, "-c", ENVIRONMENT_PROBE], capture_output=True, text=True, timeout=120)
        info.update(json.loads(probe.stdout.strip().splitlines()[-1]))
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as error:
        info["probe_error"] = f"{type(error).__name__}: {error}"
    try:
        info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                        text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        info["commit"] = None
    return info


def fitted_memory_model(outcomes: dict) -> Optional[dict]:
    """utils/memory_model.py's fp16 model fitted to the fp16 runs at 14 and 56 images per chunk."""
    from utils.memory_model import GB, MEMORY_MODELS, fit_memory_model

    records = [outcomes[name]["bench"] for name in ("bench_fp16_split4", "bench_fp16_split1")
               if outcomes.get(name, {}).get("status") == "ok"]
    if len(records) < 2:
        return None
    fitted = fit_memory_model(records, MEMORY_MODELS[("cuda", "fp16")])
    return {**{k: round(v, 2) for k, v in dataclasses.asdict(fitted).items() if isinstance(v, float)},
            "fixed_gb": round(fitted.fixed / GB, 3), "source": fitted.source}


# ------------------------------------------------------------------------------------- the prior
def prior_baseline(argv) -> int:
    """--prior_baseline RUN: the synthetic scores of RUN's checkpoint at its trained stage with the Synthetic
    curriculum's sphere prior in the calibration: its `_prior` keys are the untrained generator with
    the prior, at the same poses and latents as fid_evaluation.py's scores. Prints one JSON line."""
    import torch

    import curriculums
    from metrics.metric_main import MetricOptions
    from metrics.synthetic import synthetic_scores
    from generators.pretrained import load_model

    p = argparse.ArgumentParser()
    p.add_argument("--prior_baseline", required=True)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--num_synthetic", type=int, default=MetricOptions.num_synthetic)
    p.add_argument("--num_mvc", type=int, default=None)  # accepted with the scoring flags, unused
    args = p.parse_args(argv)
    model = load_model(args.prior_baseline, use_ema=True, device=args.device)
    synthetic = curriculums.get_curriculum("Synthetic")
    metadata = dict(model.stage.metadata, sphere_prior_radius=synthetic["sphere_prior_radius"],
                    sphere_prior_density=synthetic["sphere_prior_density"])
    scores = synthetic_scores(model.generator, metadata, num_samples=args.num_synthetic, psi=MetricOptions.psi,
                              seed=MetricOptions.seed, alpha=model.stage.alpha, device=model.device)
    print(json.dumps({"step": int(model.step), **scores}), flush=True)
    return 0


# ------------------------------------------------------------------------------------------ main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output_dir", default=None,
                   help="folder for gpu_acceptance.json and at most six PNGs (what comes back from a lent GPU); "
                        "default: runs/gpu_acceptance in the repository")
    p.add_argument("--work_dir", default=None,
                   help="folder for run directories and logs (default: runs/gpu_acceptance_work in the "
                        "repository, runs/gpu_acceptance_smoke with --smoke); kept out of --output_dir")
    p.add_argument("--smoke", action="store_true",
                   help="the same plan on CPU at tiny sizes (under a minute): proves the script without a GPU")
    p.add_argument("--budget_s", type=float, default=None,
                   help="seconds for the whole plan (default 480; 300 with --smoke, which takes under a minute "
                        "when nothing hangs); the learning run gets what the other parts leave")
    p.add_argument("--learn_min_s", type=float, default=100,
                   help="seconds of learning-run training that the earlier parts may not eat into")
    p.add_argument("--learn_max_steps", type=int, default=1600,
                   help="most steps of the learning run (the Synthetic curriculum ends at 1600)")
    p.add_argument("--learn_precision", choices=["fp16", "bf16", "fp32"], default="bf16",
                   help="precision of the learning run (bf16: no loss scale to find, native on H100)")
    p.add_argument("--learn_sample_interval", type=int, default=200,
                   help="steps between the learning run's grids (and its checkpoint.pth)")
    p.add_argument("--train_steps", type=int, default=300, help="steps of each mixed-precision Synthetic run")
    p.add_argument("--time_box", action="append", default=[], metavar="STEP=SECONDS",
                   help="override one step's time box (repeatable), e.g. bench_fp16_split1=30")
    p.add_argument("--parts", default="tests,train,bench,learn",
                   help="comma-separated parts to run (the others are reported as skipped)")
    args = p.parse_args(argv)
    for text in args.time_box:
        name, sep, value = text.partition("=")
        try:
            seconds = float(value)
        except ValueError:
            seconds = -1.0
        if not sep or not seconds > 0:
            p.error(f"--time_box {text!r}: expected STEP=SECONDS with SECONDS > 0")
    for name in ("budget_s", "learn_min_s"):
        value = getattr(args, name)
        if value is not None and not value > 0:
            p.error(f"--{name} must be positive, got {value}")
    for name in ("learn_max_steps", "train_steps", "learn_sample_interval"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    unknown = set(args.parts.split(",")) - {"tests", "train", "bench", "learn"}
    if unknown:
        p.error(f"--parts: unknown {', '.join(sorted(unknown))}; choose from tests,train,bench,learn")
    return p, args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--prior_baseline" in argv:
        return prior_baseline(argv)
    parser, args = parse_args(argv)
    sizes = smoke_sizes(args) if args.smoke else gpu_sizes(args)
    if sizes.device == "cuda":
        import torch
        if not torch.cuda.is_available():
            parser.error("no CUDA device is visible; use --smoke to run the plan on the CPU")
    budget = args.budget_s or (300.0 if args.smoke else 480.0)
    # the steps run in the repository root: paths given on the command line are made absolute first
    output_dir = Path(args.output_dir).resolve() if args.output_dir else ROOT / "runs" / "gpu_acceptance"
    work_dir = Path(args.work_dir).resolve() if args.work_dir else \
        ROOT / "runs" / ("gpu_acceptance_smoke" if args.smoke else "gpu_acceptance_work")
    if work_dir == output_dir or output_dir in work_dir.parents:
        parser.error(f"--work_dir {work_dir} must lie outside --output_dir {output_dir}: only the summary and "
                     f"the pictures belong there")
    steps = build_plan(args, sizes, work_dir, output_dir)
    names = {s.name for s in steps}
    for text in args.time_box:
        name, _, value = text.partition("=")
        if name not in names:
            parser.error(f"--time_box {name}: no such step; steps: {', '.join(s.name for s in steps)}")
        next(s for s in steps if s.name == name).time_box = float(value)
    parts = args.parts.split(",")
    for step in steps:
        if step.part not in parts and not step.skip_reason:
            step.skip_reason = "not in --parts"

    for folder in WORK_FOLDERS:  # a fresh run: no step may resume an earlier acceptance run's checkpoints
        shutil.rmtree(work_dir / folder, ignore_errors=True)
    work_dir.mkdir(parents=True, exist_ok=True)
    output_dir.mkdir(parents=True, exist_ok=True)
    for stale in [*output_dir.glob("*.png"), output_dir / SUMMARY_NAME]:
        stale.unlink(missing_ok=True)
    learn_steps = [s for s in steps if s.part == "learn" and not s.skip_reason]
    learn_reserve = (sizes.learn_min_s + learn_time_boxes(learn_steps)) if learn_steps else 0.0

    summary = {"budget_s": budget, "smoke": args.smoke, "environment": environment(sizes.device), "steps": {}}
    started = time.monotonic()

    def write_summary():
        summary["wall_s"] = round(time.monotonic() - started, 1)
        (output_dir / SUMMARY_NAME).write_text(json.dumps(_jsonable(summary), indent=1, default=str) + "\n")

    def on_step(name, outcome):
        summary["steps"][name] = outcome
        print(f"[gpu_acceptance] {name}: {outcome['status']} ({outcome.get('seconds', 0):.0f} s)", flush=True)
        write_summary()  # a later crash of this script still leaves the steps done so far

    # The learning run trains for what remains once the earlier parts are done, less its scoring boxes.
    learn_train = next(s for s in steps if s.name == "learn_train")
    before_learning = [s for s in steps if s.part != "learn"]
    outcomes = run_plan(before_learning, work_dir, budget, learn_reserve, on_step)
    remaining = budget - (time.monotonic() - started)
    if learn_train.time_box == math.inf:  # not set by --time_box
        learn_train.time_box = max(sizes.learn_min_s, remaining - learn_time_boxes(learn_steps))
    outcomes.update(run_plan([s for s in steps if s.part == "learn"], work_dir,
                             max(remaining, learn_reserve), 0.0, on_step))

    summary["parts"] = {part: sorted({o["status"] for o in outcomes.values() if o["part"] == part})
                        for part in ("tests", "train", "bench", "learn")}
    summary["memory_model_fp16_fitted"] = fitted_memory_model(outcomes)
    summary["learning"] = learning_answers(outcomes)
    summary["pictures"] = sorted(p.name for p in output_dir.glob("*.png"))
    write_summary()
    print(json.dumps(_jsonable(summary), indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
