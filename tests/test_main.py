"""The launcher: input checks before any process starts, --set, --resume auto, curriculum changes,
the run resolved once (its checkpoint read and hashed once), and a SIGTERM to a 2-process (gloo) run."""
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

# The Synthetic curriculum made tiny from the command line (stage 0 and globals only).
TINY_SETS = ["hidden_dim=16", "decoder_channels=(16, 16, 8, 8)", "disc_width_factor=0.0625", "synthetic_size=32",
             "0.batch_size=2", "0.num_steps=4", "0.img_size=8", "0.output_size=8", "0.batch_split=1"]


def tiny_argv(output_dir, *extra, sets=TINY_SETS):
    argv = ["--curriculum", "Synthetic", "--output_dir", str(output_dir), "--num_workers", "0", "--no_progress",
            "--sample_interval", "0", "--log_interval", "1"]
    for item in sets:
        argv += ["--set", item]
    return argv + list(extra)


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
])
def test_bad_flags_fail_before_anything_starts(tmp_path, capsys, extra, message):
    code, err = run_main(tiny_argv(tmp_path / "run", *extra), capsys)
    assert code == 2
    assert err.startswith("error: ") and message in err, err
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


def test_sigterm_saves_a_loadable_checkpoint(tmp_path):
    code, output, run = signal_during_training(tmp_path, send=lambda proc: proc.send_signal(signal.SIGTERM))
    assert code == 0, output[-3000:]
    assert load_checkpoint(run)["step"] >= 1
    assert "stopped by signal" in output


def test_sigterm_to_a_two_process_launcher_saves_a_checkpoint(tmp_path):
    """A SIGTERM to the launcher of `--nproc 2`, then one to the whole process group (as a cluster
    sends): both processes save once and exit; the checkpoint is written and loads."""
    def send(proc):
        proc.send_signal(signal.SIGTERM)
        os.killpg(proc.pid, signal.SIGTERM)  # a repeated signal must not abort the save

    code, output, run = signal_during_training(tmp_path, "--nproc", "2", "--device", "cpu", send=send)
    assert code == 0, output[-3000:]
    assert output.count("stopped by signal") == 1, output[-3000:]  # rank 0 reports the save
    state = load_checkpoint(run)
    assert state["step"] >= 1 and state["world_size"] == 2
    assert "Traceback" not in output and "KeyboardInterrupt" not in output


def test_device_cuda_without_a_gpu_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("torch.cuda.device_count", lambda: 0)
    code, err = run_main(tiny_argv(tmp_path / "run", "--device", "cuda"), capsys)
    assert code == 2 and err.count("\n") == 1 and "no CUDA device" in err
