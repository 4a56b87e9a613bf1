"""The launcher (main.py): input checks before any process starts, --set and --threads and what a run
records of them, resuming (--resume auto, curriculum changes, the run resolved once: its checkpoint read
and hashed once), one run per folder, signals (a SIGTERM to a 2-process gloo run too), and errors while a
run writes."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import main
import run_spec
import utils.checkpoint
from train import Trainer
from utils.checkpoint import CheckpointError, load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

# The Synthetic curriculum made tiny from the command line (stage 0 and globals only), and main.py's
# arguments for a tiny run: the fault script's (benchmarks/fault_check.py), which re-runs the signal cases.
from fault_check import TINY_SETS, group_signal, tiny_argv  # noqa: E402


def run_main(argv, capsys):
    code = main.main(argv)
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A 2-step tiny run directory (read-only for the tests)."""
    run = tmp_path_factory.mktemp("launcher") / "tiny"
    assert main.main(tiny_argv(run, "--max_steps", "2")) == 0
    return run


def _busy_port():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    return sock


# ------------------------------------ input checks: refused before any process starts, in one line
@pytest.mark.parametrize("extra,message", [
    (["--log_interval", "0"], "--log_interval must be at least 1"),
    (["--nproc", "0"], "--nproc must be at least 1"),
    (["--sample_interval", "-5"], "--sample_interval must be at least 0"),
    (["--model_save_interval", "-1"], "--model_save_interval must be at least 0"),
    (["--eval_freq", "-1"], "--eval_freq must be at least 0"),
    (["--max_steps", "0"], "--max_steps must be at least 1"),
    (["--set_step", "-10"], "--set_step must be at least 0"),
    (["--set", "synthetic_size=1", "--max_steps", "5"], "fewer than one batch of 2 per process"),
    (["--set", "0.batch_size=abc"], "expected int"),
    (["--set", "0.bach_size=4"], "unknown key 'bach_size'"),
    (["--set", "7.batch_size=4"], "no stage 7"),
    (["--set", "0.img_size=3"], "output_size (8) must be img_size (3)"),
    (["--eval_metrics", "fid,kdi"], "unknown metrics ['kdi']"),
    (["--set", "warp_projection=focal"], "warp_projection must be one of 'ray_norm', 'pinhole'"),
    (["--set", "photometric_input=half"], "photometric_input must be one of 'shifted', 'unit'"),
    (["--set", "real_resize=bicubic"], "real_resize must be one of 'nearest', 'antialias'"),
    (["--set", "discriminator=StyleGAN2Discriminator"], "unknown discriminator 'StyleGAN2Discriminator'"),
    (["--set", "model=NERF"], "NERF"),
    # Sizes, rates and camera values out of range: refused from the table of ranges beside the
    # curriculum defaults (curriculums.KEYS), before anything starts, where they crashed or were accepted.
    (["--set", "0.batch_size=0"], "stage 0: batch_size must be a positive integer, not 0"),
    (["--set", "0.batch_size=-2"], "batch_size must be a positive integer, not -2"),
    (["--set", "0.batch_split=0"], "batch_split must be a positive integer or 'auto', not 0"),
    (["--set", "0.batch_split=-1"], "batch_split must be a positive integer or 'auto', not -1"),
    (["--set", "0.img_size=-8"], "img_size must be a positive integer, not -8"),
    (["--set", "0.num_steps=0"], "num_steps must be an integer >= 2, not 0"),
    (["--set", "0.num_steps=1"], "num_steps must be an integer >= 2, not 1"),
    (["--set", "0.num_steps=-4"], "num_steps must be an integer >= 2, not -4"),
    (["--set", "hidden_dim=0"], "hidden_dim must be a positive integer, not 0"),
    (["--set", "hidden_dim=-16"], "hidden_dim must be a positive integer, not -16"),
    (["--set", "decoder_channels=(0, 0, 0, 0)"], "decoder_channels must be 4 values, each a positive integer"),
    (["--set", "fov=0"], "fov must be a finite number in (0, 180), not 0"),
    (["--set", "fov=-12"], "fov must be a finite number in (0, 180), not -12"),
    (["--set", "0.gen_lr=-1.0"], "gen_lr must be a finite number >= 0, not -1.0"),
    (["--set", "0.gen_lr=1e999"], "gen_lr must be a finite number >= 0, not inf"),
    (["--set", "latent_dim=0"], "latent_dim must be a positive integer, not 0"),
    (["--set", "grad_clip=-1"], "grad_clip must be a finite number > 0, not -1"),
    (["--set", "fade_steps=-5"], "fade_steps must be a finite number >= 0, not -5"),
    (["--set", "ray_start=-1.0"], "ray_start must be a finite number > 0, not -1.0"),
    (["--set", "max_mixup_ratio=1.5"], "max_mixup_ratio must be a finite number in [0, 1], not 1.5"),
    (["--set", "betas=(0.0, 1.0)"], "betas must be 2 values, each a finite number in [0, 1)"),
    (["--set", "nerf_noise_steps=0"], "nerf_noise_steps must be a finite number > 0, not 0"),
    (["--set", "0.img_size=12", "--set", "0.output_size=12"], "output_size (12) must be a size the discriminator"),
    (["--start_over", "--resume", "auto"], "--start_over starts a fresh run and --resume auto continues one"),
])
def test_bad_flags_fail_before_anything_starts(tmp_path, capsys, extra, message):
    code, err = run_main(tiny_argv(tmp_path / "run", *extra), capsys)
    assert code == 2
    assert err.startswith("error: ") and message in err, err
    assert err.count("\n") == 1, err  # one line, however many problems
    assert not (tmp_path / "run").exists()


def test_a_seed_out_of_range_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main.main(tiny_argv(tmp_path / "run", "--seed", str(2 ** 64)))
    assert exit_info.value.code == 2 and f"seed {2 ** 64} is out of range" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_output_dir_under_a_file_and_a_busy_port(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    code, err = run_main(tiny_argv(tmp_path / "file" / "run"), capsys)
    assert code == 2 and err.count("\n") == 1 and "is a file, not a folder" in err
    sock = _busy_port()
    try:
        port = sock.getsockname()[1]
        code, err = run_main(tiny_argv(tmp_path / "run", "--nproc", "2", "--device", "cpu", "--port", str(port)),
                             capsys)
    finally:
        sock.close()
    assert code == 2 and err.count("\n") == 1
    assert f"--port {port} is not available" in err and "leave --port out" in err
    assert not (tmp_path / "run").exists()


def test_an_output_dir_under_proc_is_one_line(capsys):
    code, err = run_main(tiny_argv("/proc/mvcgan_no_such_dir/run", "--max_steps", "1"), capsys)
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: --output_dir /proc/"), err


def test_device_cuda_without_a_gpu_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("torch.cuda.device_count", lambda: 0)
    code, err = run_main(tiny_argv(tmp_path / "run", "--device", "cuda"), capsys)
    assert code == 2 and err.count("\n") == 1 and "no CUDA device" in err


def test_a_dataset_path_given_with_set_is_what_the_hint_says_to_fix(tmp_path, capsys):
    sets = TINY_SETS + ["dataset=FFHQ", f"dataset_path={tmp_path / 'nothing' / '*.png'}"]
    code, err = run_main(tiny_argv(tmp_path / "run", sets=sets), capsys)
    assert code == 2 and "matches no files" in err
    assert "--set dataset_path=" in err and "curriculums.py" not in err


def test_a_folder_without_one_readable_image_is_one_line(tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.png").write_bytes(b"not a png")
    sets = TINY_SETS + ["dataset=FFHQ", f"dataset_path={folder}"]
    code, err = run_main(tiny_argv(tmp_path / "run", sets=sets), capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert "none of the 3 files that dataset_path" in err and "is a readable image" in err
    assert not (tmp_path / "run").exists()


# ------------------------------------------------- --set, --threads and what a run records of them
def test_the_published_behaviour_and_its_corrections_are_recorded(tmp_path, capsys):
    """The three choices between published behaviour and correction are curriculum keys: --set
    switches them, options.json and the checkpoint record them."""
    sets = TINY_SETS + ["warp_projection=ray_norm", "photometric_input=shifted", "real_resize=antialias"]
    code, err = run_main(tiny_argv(tmp_path / "run", "--max_steps", "1", sets=sets), capsys)
    assert code == 0, err
    options = json.loads((tmp_path / "run" / "options.json").read_text())
    state = load_checkpoint(tmp_path / "run")
    for recorded in (options["curriculum"], state["curriculum"]):
        assert (recorded["warp_projection"], recorded["photometric_input"], recorded["real_resize"]) == \
            ("ray_norm", "shifted", "antialias")
    assert state["curriculum_overrides"]["warp_projection"] == "ray_norm"


def test_set_values_are_recorded_and_honoured_on_resume(tiny_run, tmp_path, capsys):
    options = json.loads((tiny_run / "options.json").read_text())
    assert options["args"]["curriculum_overrides"]["0.img_size"] == 8
    assert options["curriculum"]["0"]["img_size"] == 8
    state = load_checkpoint(tiny_run)
    assert state["curriculum_overrides"]["decoder_channels"] == (16, 16, 8, 8)
    assert state["curriculum"]["hidden_dim"] == 16
    # Resume without repeating the tiny values: they come from the checkpoint (else the widths
    # would not fit); a new --set is added to them.
    resumed = tmp_path / "resumed"
    code, err = run_main(tiny_argv(resumed, "--load_dir", str(tiny_run), "--max_steps", "3",
                                   sets=["0.gen_lr=1e-4"]), capsys)
    assert code == 0, err
    state = load_checkpoint(resumed)
    assert state["step"] == 3
    assert state["curriculum"][0]["gen_lr"] == 1e-4 and state["curriculum"]["hidden_dim"] == 16
    assert state["curriculum_overrides"]["0.img_size"] == 8


def test_a_stage_key_without_its_stage_is_applied_to_every_stage_and_said(tmp_path, capsys):
    code, err = run_main(tiny_argv(tmp_path / "run", "--max_steps", "1", sets=TINY_SETS + ["batch_size=4"]), capsys)
    assert code == 0, err
    assert ("note: --set batch_size=4 has no stage number, so it is a global value: batch_size is 4 in every "
            "stage (0, 800); for one stage write --set 0.batch_size=4") in err
    assert json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])["batch_size"] == 4


def test_threads_default_to_a_share_of_the_cores_and_are_recorded(tmp_path, capsys):
    from utils.cpu_runtime import available_cores

    args = main.parse_args(tiny_argv(tmp_path / "run", "--nproc", "2"))
    assert main.config_from_args(args, spawned=2).threads == max(1, available_cores() // 2)
    assert main.config_from_args(args, spawned=1).threads is None  # one process: torch's choice
    previous = torch.get_num_threads()
    try:
        assert run_main(tiny_argv(tmp_path / "run", "--threads", "1", "--max_steps", "1"), capsys)[0] == 0
    finally:
        torch.set_num_threads(previous)
    options = json.loads((tmp_path / "run" / "options.json").read_text())
    assert options["threads"] == 1 and options["args"]["threads"] == 1


def test_every_script_takes_threads():
    """Threads per process for training, rendering, shapes, evaluation, the viewer and inversion."""
    import extract_shapes
    import fid_evaluation
    import invert
    import render_multiview_image
    import viewer

    parsers = {"main.py": lambda argv: main.parse_args(["--curriculum", "Synthetic", *argv]),
               "render_multiview_image.py": render_multiview_image.build_parser().parse_args,
               "extract_shapes.py": extract_shapes.build_parser().parse_args,
               "fid_evaluation.py": fid_evaluation.build_parser().parse_args,
               "viewer.py": viewer.build_parser().parse_args,
               "invert.py": invert.build_parser().parse_args}
    for script, parse in parsers.items():
        required = {"main.py": [], "invert.py": ["--path", "x.pth", "--image", "x.png"]}.get(script, ["--path", "x.pth"])
        assert parse(required + ["--threads", "3"]).threads == 3, script
        with pytest.raises(SystemExit):
            parse(required + ["--threads", "0"])


# -------------------------------------- resuming: --load_dir, --resume auto, the run resolved once
def test_checkpoint_of_another_width_is_one_line(tiny_run, tmp_path, capsys):
    code, err = run_main(tiny_argv(tmp_path / "wide", "--load_dir", str(tiny_run), sets=["hidden_dim=32"]), capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("error: cannot resume") and "another architecture" in err


def test_resuming_another_curriculum_needs_the_explicit_flag(tiny_run, tmp_path, capsys):
    code, err = run_main(["--curriculum", "FFHQ", "--output_dir", str(tmp_path / "ffhq"), "--load_dir",
                          str(tiny_run)], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "trained with curriculum 'Synthetic'" in err and "--allow_curriculum_change" in err
    # With the flag the curriculum check passes; FFHQ's own dataset_path placeholder is the next problem.
    code, err = run_main(["--curriculum", "FFHQ", "--output_dir", str(tmp_path / "ffhq"), "--load_dir",
                          str(tiny_run), "--allow_curriculum_change"], capsys)
    assert code == 2 and "dataset_path" in err and "curriculum 'Synthetic'" not in err


def test_resume_auto_starts_fresh_then_continues_the_output_dir(tmp_path, capsys):
    run = tmp_path / "requeued"
    assert main.main(tiny_argv(run, "--resume", "auto", "--max_steps", "1")) == 0
    assert load_checkpoint(run)["step"] == 1
    assert main.main(tiny_argv(run, "--resume", "auto", "--max_steps", "2")) == 0  # the same job, requeued
    assert load_checkpoint(run)["step"] == 2
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]  # step 2 continued step 1, not a fresh start
    # --set_step belongs to the job's first start: a requeue continues, it does not rewind.
    assert main.main(tiny_argv(run, "--resume", "auto", "--set_step", "0", "--max_steps", "3")) == 0
    assert load_checkpoint(run)["step"] == 3


def test_a_resume_after_kill_9_cuts_metrics_back_to_the_resumed_step(tmp_path, capsys):
    """After kill -9 and --resume auto, metrics.jsonl used to keep the killed run's rows past the resumed
    step, then have those steps again: two curves. It is cut back (atomically) to the checkpoint's step."""
    run = tmp_path / "killed"
    assert main.main(tiny_argv(run, "--max_steps", "1")) == 0
    log = run / "metrics.jsonl"
    as_killed = log.read_text() + '{"step": 2, "killed": 1}\n{"step": 3, "killed": 1}\n{"step": 4, "ki'
    log.write_text(as_killed)  # the rows a killed run wrote after its last checkpoint, the last one cut short
    assert main.main(tiny_argv(run, "--resume", "auto", "--max_steps", "3")) == 0
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3] and not any("killed" in r for r in records)
    (previous,) = run.glob("previous_*")
    assert (previous / "metrics.jsonl").read_text() == as_killed
    # a resume with nothing past its step changes nothing
    assert main.main(tiny_argv(run, "--resume", "auto", "--max_steps", "4")) == 0
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [1, 2, 3, 4]
    assert len(list(run.glob("previous_*"))) == 1


def test_a_resumed_run_reads_and_hashes_its_checkpoint_once(tiny_run, tmp_path, monkeypatch):
    """main.py resolves the run once: a single-process resume loads the checkpoint file once and computes
    its SHA-256 once (the trainer reuses what the launcher read); before, every process did both again."""
    _, digest = utils.checkpoint.read_checkpoint(tiny_run)
    loads, hashed_steps = [], []
    torch_load, state_checksum = torch.load, utils.checkpoint.state_checksum

    def counting_load(f, *args, **kwargs):
        loads.append(str(f))
        return torch_load(f, *args, **kwargs)

    def counting_checksum(state):
        hashed_steps.append(state["step"])
        return state_checksum(state)

    monkeypatch.setattr(torch, "load", counting_load)
    monkeypatch.setattr(utils.checkpoint, "state_checksum", counting_checksum)
    resumed = tmp_path / "resumed"
    assert main.main(tiny_argv(resumed, "--load_dir", str(tiny_run), "--max_steps", "3")) == 0
    assert loads == [str(tiny_run / "checkpoint.pth")]
    assert hashed_steps == [2, 3]  # the verification of step 2, the save of step 3
    options = json.loads((resumed / "options.json").read_text())
    assert options["resume_from"] == {"path": str(tiny_run / "checkpoint.pth"), "checksum": digest}
    assert options["args"]["eval_freq"] == 0 and options["curriculum"]["hidden_dim"] == 16


def test_a_spawned_process_trusts_the_verified_checksum(tiny_run, tmp_path, monkeypatch):
    """A process given only the RunSpec (as spawned ones are) reads the weights without hashing them, and
    refuses a file that is not the one the launcher verified."""
    config = run_spec.TrainConfig(curriculum="Synthetic", output_dir=str(tmp_path / "run"), load_dir=str(tiny_run),
                                  num_workers=0, progress=False)
    spec, _ = run_spec.resolve_run(config)
    assert spec.resume_path == str(tiny_run / "checkpoint.pth") and len(spec.resume_digest) == 64
    hashed = []
    monkeypatch.setattr(utils.checkpoint, "state_checksum", lambda state: hashed.append(state) or {})
    trainer = Trainer(0, 1, spec, torch.device("cpu"))
    trainer.load(spec.resume_path)
    assert trainer.step == 2 and not hashed
    stale = run_spec.RunSpec(spec.config, spec.curriculum, spec.resume_path, "0" * 64)
    with pytest.raises(CheckpointError, match="changed since the launcher verified it"):
        Trainer(0, 1, stale, torch.device("cpu")).load(stale.resume_path)


def test_resume_auto_resolves_to_the_run_directorys_checkpoint(tiny_run):
    spec, state = run_spec.resolve_run(run_spec.TrainConfig(curriculum="Synthetic", output_dir=str(tiny_run),
                                                            resume="auto", set_step=0))
    assert spec.resume_path == str(tiny_run / "checkpoint.pth") and state["step"] == 2
    assert spec.config.set_step is None  # --set_step was for the job's first start, not its requeue


# ------------------------------- one run per folder: the run directory's lock, another run's files
def _hold_lock_in_another_process(folder):
    """A process (no torch: quick to start) that holds `folder`'s run lock until killed, as a live run does."""
    code = ("import sys, time; sys.path.insert(0, sys.argv[1]); from utils.run_dir import RunDirLock; "
            "RunDirLock(sys.argv[2]).acquire(); print('locked', flush=True); time.sleep(600)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(ROOT), str(folder)], stdout=subprocess.PIPE)
    assert holder.stdout.readline().strip() == b"locked"
    return holder


@pytest.mark.slow
def test_a_live_run_locks_its_folder_and_a_killed_one_does_not_leave_it_locked(tmp_path, capsys):
    """A second run in a folder another live run writes is refused before it touches anything, its
    checkpoint write's temp file included; the kernel drops the lock of a run killed with SIGKILL."""
    run = tmp_path / "run"
    run.mkdir()
    in_flight = run / ".checkpoint.pth.live1234.tmp"  # the live run's checkpoint being written
    in_flight.write_bytes(b"half of a checkpoint")
    holder = _hold_lock_in_another_process(run)
    try:
        code, err = run_main(tiny_argv(run, "--max_steps", "1"), capsys)
        assert code == 2 and err.count("\n") == 1, err
        assert f"another run (pid {holder.pid} on " in err and "is writing to" in err
        with pytest.raises(ValueError, match="another run"):  # a Trainer started from Python takes the lock too
            Trainer(0, 1, run_spec.TrainConfig(curriculum="Synthetic", output_dir=str(run), num_workers=0,
                                               max_steps=1, curriculum_overrides=dict(
                                                   main.curriculums.parse_override(t) for t in TINY_SETS)),
                    torch.device("cpu")).run()
        assert in_flight.read_bytes() == b"half of a checkpoint"  # never touched while its writer lives
        assert not (run / "metrics.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()
    # The holder died without unlocking: its run is over, so the folder is free and its temp file stale.
    code, err = run_main(tiny_argv(run, "--max_steps", "1"), capsys)
    assert code == 0, err
    assert not in_flight.exists() and load_checkpoint(run)["step"] == 1


@pytest.mark.slow
def test_a_folder_with_another_runs_checkpoint_is_refused_unless_told(tmp_path, capsys):
    """The demo command run twice used to replace the finished checkpoint and mix both runs' metrics."""
    run = tmp_path / "run"
    assert run_main(tiny_argv(run, "--max_steps", "2"), capsys)[0] == 0
    before = (run / "metrics.jsonl").read_text()
    code, err = run_main(tiny_argv(run, "--max_steps", "1"), capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert "holds another run (checkpoint.pth, metrics.jsonl, options.json)" in err
    assert "--resume auto" in err and "--start_over" in err
    assert load_checkpoint(run)["step"] == 2 and (run / "metrics.jsonl").read_text() == before
    # --load_dir of the folder itself continues it
    assert run_main(tiny_argv(run, "--load_dir", str(run), "--max_steps", "3"), capsys)[0] == 0
    assert load_checkpoint(run)["step"] == 3
    # --start_over: a fresh run, the old one kept aside
    code, err = run_main(tiny_argv(run, "--max_steps", "1", "--start_over"), capsys)
    assert code == 0, err
    previous = [p for p in run.iterdir() if p.name.startswith("previous_")]
    assert len(previous) == 1 and f"moved its files to {previous[0]}" in err
    assert load_checkpoint(previous[0])["step"] == 3
    assert load_checkpoint(run)["step"] == 1
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1]


def test_resume_auto_in_a_folder_killed_before_its_first_checkpoint_starts_over(tmp_path, capsys):
    """A requeued job whose first run died before saving starts fresh and keeps the old files aside."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    code, err = run_main(tiny_argv(run, "--resume", "auto", "--max_steps", "1"), capsys)
    assert code == 0, err
    assert "held another run (metrics.jsonl): moved its files to" in err
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1]
    assert len(list(run.glob("previous_*/metrics.jsonl"))) == 1


# -------------------------------------------------------- signals: a stopped run saves and resumes
def signal_during_training(tmp_path, *extra, send):
    """Start `main.py` (tiny, its own session) and call `send(process)` once it has trained a step;
    returns (exit code, output, run directory)."""
    run = tmp_path / "signalled"
    argv = [sys.executable, str(ROOT / "main.py"), *tiny_argv(run, *extra)]
    proc = subprocess.Popen(argv, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 50
        while not (run / "metrics.jsonl").exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert (run / "metrics.jsonl").exists(), proc.communicate()[0].decode()[-3000:]
        send(proc)
        output = proc.communicate(timeout=50)[0].decode()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode, output, run


@pytest.mark.slow
def test_sigterm_saves_a_loadable_checkpoint(tmp_path):
    code, output, run = signal_during_training(tmp_path, send=lambda proc: proc.send_signal(signal.SIGTERM))
    assert code == 0, output[-3000:]
    assert load_checkpoint(run)["step"] >= 1
    assert "stopped by signal" in output


@pytest.mark.slow
def test_a_group_sigint_then_sigterm_with_loader_workers_saves_once_and_resumes(tmp_path):
    """Ctrl-C and then a cluster's SIGTERM reach every process of the job, the two loader workers too: they
    ignore both, the training process warns once per signal (not once per worker), saves, exits 0, and
    --resume auto continues the checkpoint. (Before, the SIGTERM killed the workers first and the run
    crashed in its loader without a checkpoint.)"""
    outcome = group_signal(tmp_path / "run", signals=(signal.SIGINT, signal.SIGTERM), num_workers=2)
    output = outcome.output
    assert outcome.exit_code == 0 and "Traceback" not in output, output[-3000:]
    assert output.count("received signal 2: saving a checkpoint") == 1, output[-3000:]
    assert output.count("received signal 15 again") == 1 and output.count("stopped by signal") == 1
    assert outcome.saved_step >= 2 and outcome.resumed_step == outcome.saved_step + 1


@pytest.mark.slow
def test_sigterm_to_a_two_process_launcher_saves_a_checkpoint(tmp_path):
    """A SIGTERM to the launcher of `--nproc 2` with two loader workers each, then one to the whole process
    group (as a cluster sends): both processes save once and exit; the checkpoint is written, loads and
    --resume auto continues it."""
    outcome = group_signal(tmp_path / "run", nproc=2, num_workers=2, launcher_first=True)
    output = outcome.output
    assert outcome.exit_code == 0, output[-3000:]
    assert output.count("stopped by signal") == 1, output[-3000:]  # rank 0 reports the save
    assert output.count("received signal 15: saving a checkpoint") == 1, output[-3000:]  # rank 0 alone warns
    assert outcome.saved_step >= 1 and outcome.saved_world_size == 2
    assert "Traceback" not in output and "KeyboardInterrupt" not in output
    assert outcome.resumed_step == outcome.saved_step + 1


# ------------------------------------------------------------- errors while a run writes: one line
@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB tmpfs (room for a run's first files, not for its 7.5 MB checkpoint); skipped without the
    right to mount one (the checkpoint test simulates a full disk instead)."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)],
                             capture_output=True).returncode == 0
    if not mounted:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def test_a_full_disk_ends_in_one_line_naming_it(small_disk, capsys):
    code, err = run_main(tiny_argv(small_disk / "run", "--max_steps", "1"), capsys)
    lines = [line for line in err.splitlines() if not line.startswith("20")]  # without the log lines
    assert code == 1 and lines == [lines[0]] and lines[0].startswith("error: could not write the checkpoint"), err
    assert "No space left on device" in lines[0] and "Traceback" not in err and "unexpected pos" not in err
    assert not list((small_disk / "run").glob(".checkpoint*.tmp"))  # the failed write cleaned up after itself
