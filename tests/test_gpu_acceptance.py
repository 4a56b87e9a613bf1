"""benchmarks/gpu_acceptance.py: the GPU acceptance run, proven on the CPU before a GPU is lent.

`--smoke` runs the whole plan (tests, training, bench_step, learning + scoring + rendering) at tiny
sizes; one step is forced past its time box to show that it is reported and the plan goes on. The
time boxes themselves (a crash, a hang, a graceful stop, the reserve) are tested on small scripts.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import curriculums  # noqa: E402
import gpu_acceptance  # noqa: E402
from gpu_acceptance import Step, run_plan  # noqa: E402


def python_step(name, code, time_box, **kwargs):
    return Step(name, "part", [sys.executable, "-c", code], time_box, **kwargs)


@pytest.mark.slow
def test_a_crash_and_a_hang_are_reported_and_the_later_steps_still_run(tmp_path):
    graceful = ("import signal, sys, time\n"
                "signal.signal(signal.SIGTERM, lambda *a: (print('saving'), sys.exit(0)))\n"
                "time.sleep(60)")
    steps = [python_step("crash", "import sys; print('something broke'); sys.exit(3)", 20),
             python_step("hang", "import time; time.sleep(60)", 1),
             python_step("training", graceful, 1, graceful=True, grace_s=10),
             python_step("checked", "print('fine')", 20,
                         check=lambda step, outcome: {"results": {"value": 1}, "failed": ["value too small"]}),
             python_step("fine", "print('fine')", 20)]
    started = time.monotonic()
    outcomes = run_plan(steps, tmp_path, budget_s=100)
    assert time.monotonic() - started < 30  # the hang cost its time box, not its 60 s
    assert [outcomes[s.name]["status"] for s in steps] == ["failed", "timed_out", "stopped", "failed", "ok"]
    assert outcomes["crash"]["returncode"] == 3 and "something broke" in outcomes["crash"]["error_tail"]
    assert 1 <= outcomes["hang"]["seconds"] < 15 and "error_tail" in outcomes["hang"]
    assert outcomes["training"]["returncode"] == 0 and "error_tail" not in outcomes["training"]
    assert outcomes["checked"]["value"] == 1 and outcomes["checked"]["failed_checks"] == ["value too small"]
    assert "saving" in Path(outcomes["training"]["log"]).read_text()


@pytest.mark.slow
def test_the_reserve_cuts_and_skips_steps_that_would_eat_into_the_learning_time(tmp_path):
    steps = [python_step("cut", "import time; time.sleep(60)", 50),
             python_step("no_time", "print('never')", 20),
             python_step("learning", "print('runs')", 20, reserve_for_later=False)]
    outcomes = run_plan(steps, tmp_path, budget_s=16, learn_reserve_s=10)
    assert outcomes["cut"]["status"] == "timed_out" and outcomes["cut"]["time_box_cut_from_s"] == 50
    assert outcomes["cut"]["time_box_s"] <= 6
    assert outcomes["no_time"]["status"] == "skipped" and "no time left" in outcomes["no_time"]["reason"]
    assert outcomes["learning"]["status"] == "ok"


@pytest.mark.slow
def test_smoke_runs_the_whole_plan_on_cpu(tmp_path):
    """The acceptance command end to end on the CPU, with bench_fp16_split1 forced past its time box."""
    output_dir, work_dir = tmp_path / "out", tmp_path / "work"
    result = subprocess.run([sys.executable, "benchmarks/gpu_acceptance.py", "--smoke", "--output_dir",
                             str(output_dir), "--work_dir", str(work_dir), "--time_box", "bench_fp16_split1=1"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    printed = json.loads(result.stdout[result.stdout.index("\n{") + 1:])  # the summary is printed last
    summary = json.loads((output_dir / "gpu_acceptance.json").read_text())
    assert printed == summary
    steps = summary["steps"]
    assert {name: step["status"] for name, step in steps.items()} == {
        "tests": "ok", "train_fp16": "ok", "train_bf16": "skipped", "bench_fp16_split4": "ok",
        "bench_bf16_split4": "skipped", "bench_fp16_split1": "timed_out", "bench_fp16_split4_compile": "skipped",
        "bench_bf16_split4_compile": "skipped", "learn_train": "ok", "learn_score": "ok", "learn_prior": "ok",
        "learn_render": "ok"}
    assert "1 passed" in steps["tests"]["pytest"] and steps["tests"]["failed_tests"] == []
    assert steps["train_fp16"]["steps"] == 2 and steps["train_fp16"]["longest_skipped_streak"] == 0
    assert steps["bench_fp16_split4"]["bench"]["sec_per_step_median"] > 0
    assert steps["bench_fp16_split4"]["bench"]["batch_split_used"] == 2
    assert steps["bench_fp16_split1"]["error_tail"].startswith("$ ")  # the command line, then its output
    assert summary["memory_model_fp16_fitted"] is None  # needs both fp16 bench steps
    learning = summary["learning"]
    for key in ("depth_error_learned", "depth_error_flat_wall", "depth_error_sphere_prior"):
        assert isinstance(learning[key], float), key
    assert isinstance(learning["beats_flat_wall"], bool) and isinstance(learning["beats_sphere_prior"], bool)
    # what comes back from a lent GPU: one folder, the summary and at most six small PNGs
    files = sorted(p.name for p in output_dir.iterdir())
    assert all((output_dir / name).is_file() for name in files)
    assert files == sorted(["gpu_acceptance.json", "learn_depth.png", "learn_fixed_ema.png", "learn_multiview.png",
                            "learn_tilted_ema.png", "train_fp16_fixed_ema.png"])
    assert all((output_dir / name).stat().st_size < 2 ** 20 for name in files)
    assert summary["pictures"] == [name for name in files if name.endswith(".png")]


def test_bad_flags_are_one_error_line(capsys):
    import pytest

    for argv, message in ((["--time_box", "tests"], "expected STEP=SECONDS"),
                          (["--smoke", "--time_box", "nonsense=3"], "no such step"),
                          (["--parts", "tests,gpu"], "unknown gpu"),
                          (["--budget_s", "0"], "must be positive")):
        with pytest.raises(SystemExit) as info:
            gpu_acceptance.main(argv + (["--work_dir", "runs/gpu_acceptance_flag_test"] if "--smoke" in argv else []))
        assert info.value.code == 2
        assert message in capsys.readouterr().err


def test_the_gpu_plans_training_and_scoring_commands_are_accepted(tmp_path):
    """What the plan runs on a GPU, checked here without one: main.py's flags and --set values pass every
    check made before training starts (the 64 px learning run: a valid curriculum, both stages 64 px),
    fid_evaluation.py accepts its flags, and the bench steps ask for the paper's batch in 4 chunks."""
    import fid_evaluation
    import main as main_module

    _, args = gpu_acceptance.parse_args([])
    steps = {s.name: s for s in gpu_acceptance.build_plan(args, gpu_acceptance.gpu_sizes(args), tmp_path / "work",
                                                          tmp_path / "out")}
    for name in ("train_fp16", "train_bf16", "learn_train"):
        command = steps[name].command
        assert command[1] == "main.py" and "cuda" in command
        flags = main_module.parse_args(command[2:])
        spec, _ = main_module.prepare_run(flags, world_size=1)
        if name == "learn_train":
            for stage in (0, 800):
                metadata = curriculums.extract_metadata(spec.curriculum, stage)
                assert (metadata["img_size"], metadata["output_size"]) == (64, 64)
                assert metadata["sphere_prior_density"] == 0.0
    score = steps["learn_score"].command
    parser = fid_evaluation.build_parser()
    fid_evaluation.validate_args(parser, parser.parse_args(score[2:]))
    bench = steps["bench_fp16_split4"].command
    assert bench[bench.index("--batch_size") + 1] == "56" and bench[bench.index("--batch_split") + 1] == "4"
    assert steps["tests"].command[-2:] == ["--device", "cuda"]


def test_failing_tests_and_an_out_of_memory_bench_say_what_failed(tmp_path):
    pytest_output = ("import sys\nprint('F.')\nprint('FAILED tests/test_train.py::test_x[cuda] - AssertionError')\n"
                     "print('=== 1 failed, 1 passed in 2.00s ===')\nsys.exit(1)")
    oom = "import sys\nprint('torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB')\nsys.exit(1)"
    steps = [python_step("tests", pytest_output, 20, check=gpu_acceptance.check_tests, check_failures=True),
             python_step("bench", oom, 20, check=gpu_acceptance.check_bench, check_failures=True)]
    outcomes = run_plan(steps, tmp_path, budget_s=100)
    assert outcomes["tests"]["status"] == "failed"
    assert outcomes["tests"]["failed_tests"] == ["tests/test_train.py::test_x[cuda]"]
    assert outcomes["tests"]["pytest"] == "1 failed, 1 passed in 2.00s"
    assert outcomes["bench"]["status"] == "failed" and outcomes["bench"]["out_of_memory"] is True
