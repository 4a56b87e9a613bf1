"""End-to-end training: steps, stage changes, exact resume, 2-process gloo, signals, clean end."""
from __future__ import annotations

import json
import math
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import curriculums
from train import TrainConfig, Trainer, train
from utils.checkpoint import load_checkpoint


TINY_STAGE = dict(batch_size=2, num_steps=4, img_size=8, output_size=8, batch_split=1, gen_lr=2e-4,
                  disc_lr=4e-4, pos_lambda=15, reproj_lambda=1)
TINY = {
    0: dict(TINY_STAGE),
    3: dict(TINY_STAGE, output_size=16, batch_split=2),
    6: {},
    "hidden_dim": 16, "decoder_channels": (16, 16, 8, 8), "disc_width_factor": 0.0625,
    "synthetic_size": 32, "fade_steps": 2, "topk_interval": 2,
}


def tiny_config(tmp_path, name="run", **kwargs) -> TrainConfig:
    defaults = dict(curriculum="Synthetic", output_dir=str(tmp_path / name), sample_interval=0,
                    model_save_interval=0, num_workers=0, log_interval=1, progress=False,
                    curriculum_overrides=TINY)
    defaults.update(kwargs)
    return TrainConfig(**defaults)


def checkpoint_tensors(path):
    state = load_checkpoint(path)
    flat = {}
    for key in ("generator", "discriminator", "generator_ema", "generator_ema2"):
        for name, tensor in state[key].items():
            flat[f"{key}.{name}"] = tensor
    for key in ("optimizer_G", "optimizer_D"):
        for index, per_param in state[key]["state"].items():
            for name, value in per_param.items():
                flat[f"{key}.{index}.{name}"] = torch.as_tensor(value)
    return state, flat


def test_training_runs_through_a_stage_change_and_ends_cleanly(tmp_path):
    config = tiny_config(tmp_path, sample_interval=100)  # no grids during the 6 steps, the final ones at the end
    assert train(0, 1, config) == 0
    run = Path(config.output_dir)
    state = load_checkpoint(run / "checkpoint.pth")
    assert state["step"] == 6  # stopped at the final (empty) stage, not with a KeyError
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records]
    assert steps == list(range(1, 7))
    assert {r["output_size"] for r in records} == {8, 16}
    for r in records:
        for key in ("d_loss", "g_loss", "photometric", "topk", "alpha", "sec_per_step", "stage"):
            assert key in r
        assert r["photometric"] > 0
    assert records[3]["alpha"] == 0 and records[4]["alpha"] == 0.5  # fade restarts at the stage change
    for suffix in ("fixed", "tilted", "fixed_ema", "tilted_ema", "random"):
        assert (run / f"6_{suffix}.png").is_file()
    # The training images, written once (at the first stage's size): 20 images, 5 per row.
    from PIL import Image
    assert Image.open(run / "real.png").size == (5 * 8, 4 * 8)
    options = json.loads((run / "options.json").read_text())
    assert options["modules"]["generator"]["parameters"] > 0
    # Training changed the weights and the EMA lags behind them.
    assert not torch.equal(state["generator"]["decoder.to_rgb.0.weight"],
                           state["generator_ema2"]["decoder.to_rgb.0.weight"])


@pytest.mark.parametrize("first_leg", [2, 3])
def test_resume_continues_exactly(tmp_path, first_leg):
    """Training 6 steps straight equals training N, stopping, and resuming (also at a stage boundary)."""
    torch.use_deterministic_algorithms(True)
    try:
        straight = tiny_config(tmp_path, "straight")
        assert train(0, 1, straight) == 0
        split = tiny_config(tmp_path, "split", max_steps=first_leg)
        assert train(0, 1, split) == 0
        assert load_checkpoint(Path(split.output_dir))["step"] == first_leg
        resumed = tiny_config(tmp_path, "split", load_dir=split.output_dir)
        assert train(0, 1, resumed) == 0
    finally:
        torch.use_deterministic_algorithms(False)
    state_a, a = checkpoint_tensors(Path(straight.output_dir) / "checkpoint.pth")
    state_b, b = checkpoint_tensors(Path(split.output_dir) / "checkpoint.pth")
    assert state_a["step"] == state_b["step"] == 6
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different[:5]


@pytest.mark.slow
def test_resume_with_loader_workers_on_an_image_folder_is_exact(tmp_path):
    """Two loader workers (kept alive across epochs) and random flips: stopping at step 3 and resuming
    gives the weights of the uninterrupted run (the second leg crosses epoch boundaries)."""
    import numpy as np
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):  # 2 batches of 2 per epoch
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    overrides = {**{k: v for k, v in TINY.items() if not isinstance(k, int)}, 0: dict(TINY_STAGE), 6: {},
                 "dataset": "FFHQ", "dataset_path": str(folder)}
    common = dict(num_workers=2, curriculum_overrides=overrides)
    torch.use_deterministic_algorithms(True)
    try:
        straight = tiny_config(tmp_path, "straight", **common)
        assert train(0, 1, straight) == 0
        split = tiny_config(tmp_path, "split", max_steps=3, **common)
        assert train(0, 1, split) == 0
        assert train(0, 1, tiny_config(tmp_path, "split", load_dir=split.output_dir, **common)) == 0
    finally:
        torch.use_deterministic_algorithms(False)
    _, a = checkpoint_tensors(Path(straight.output_dir) / "checkpoint.pth")
    _, b = checkpoint_tensors(Path(split.output_dir) / "checkpoint.pth")
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different[:5]


def test_loader_workers_persist_across_epochs(tmp_path):
    trainer = Trainer(0, 1, tiny_config(tmp_path, "workers", num_workers=2), torch.device("cpu"))
    loader = trainer.make_loader(curriculums_metadata(trainer))
    assert loader.persistent_workers
    trainer = Trainer(0, 1, tiny_config(tmp_path, "inline", num_workers=0), torch.device("cpu"))
    assert not trainer.make_loader(curriculums_metadata(trainer)).persistent_workers


def curriculums_metadata(trainer):
    import curriculums

    return curriculums.extract_metadata(trainer.curriculum, 0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world_size, config, init_method, result_path):
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world_size)
    trainer = Trainer(rank, world_size, config, torch.device("cpu"))
    trainer.run()
    flat = torch.cat([p.detach().flatten() for p in
                      [*trainer.generator.parameters(), *trainer.discriminator.parameters()]])
    gathered = [torch.zeros_like(flat) for _ in range(world_size)]
    dist.all_gather(gathered, flat)
    if rank == 0:
        torch.save(torch.stack(gathered), result_path)
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_processes_keep_identical_weights(tmp_path):
    config = tiny_config(tmp_path, "ddp", max_steps=2)
    result = tmp_path / "weights.pt"
    mp.spawn(_ddp_worker, args=(2, config, f"tcp://127.0.0.1:{_free_port()}", str(result)), nprocs=2, join=True)
    weights = torch.load(result, weights_only=True)
    assert torch.equal(weights[0], weights[1])
    assert load_checkpoint(Path(config.output_dir))["step"] == 2


def test_bad_curriculum_and_empty_glob_fail_before_spawning(tmp_path, capsys):
    import main

    assert main.main(["--curriculum", "NoSuchThing", "--output_dir", str(tmp_path / "x")]) == 2
    assert "Synthetic" in capsys.readouterr().err  # lists the available curricula
    assert main.main(["--curriculum", "CelebAHQ", "--output_dir", str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err
    assert "dataset_path" in err and "CelebAHQ" in err
    assert not (tmp_path / "y").exists()
    assert main.main(["--curriculum", "Synthetic", "--output_dir", str(tmp_path / "z"),
                      "--load_dir", str(tmp_path / "nothing-here")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def _poisoned_run(tmp_path, monkeypatch, name, method, poison):
    """Train 2 good steps (checkpoint at 2), then resume with `method` of MVCGANLoss poisoned by
    `poison(self, stats)`, saving every step. Returns (trainer, error message, state at step 2)."""
    import losses

    overrides = {k: v for k, v in TINY.items() if not isinstance(k, int)}
    overrides.update({0: dict(TINY_STAGE), 40: {}})
    config = tiny_config(tmp_path, name, max_steps=2, curriculum_overrides=overrides)
    assert train(0, 1, config) == 0
    before = load_checkpoint(Path(config.output_dir))
    assert before["step"] == 2

    original = getattr(losses.MVCGANLoss, method)

    def poisoned(self, *args, **kwargs):
        stats = original(self, *args, **kwargs)
        poison(self, stats)
        return stats

    monkeypatch.setattr(losses.MVCGANLoss, method, poisoned)
    # model_save_interval=1: a save is due at every step of the bad streak and must be refused.
    resumed = tiny_config(tmp_path, name, load_dir=config.output_dir, curriculum_overrides=overrides,
                          model_save_interval=1)
    trainer = Trainer(0, 1, resumed, torch.device("cpu"))
    with pytest.raises(FloatingPointError, match="consecutive steps had non-finite") as info:
        trainer.run()
    assert str(Path(config.output_dir) / "checkpoint.pth") in str(info.value)  # names the good checkpoint
    assert trainer.step == 2 + 10
    lines = [json.loads(l) for l in (Path(config.output_dir) / "metrics.jsonl").read_text().splitlines()]
    assert sum(l["skipped"] for l in lines) == 10
    after = load_checkpoint(Path(config.output_dir))
    assert after["step"] == 2  # the last good checkpoint is intact: no save during the streak
    assert not list(Path(config.output_dir).glob("checkpoint_*.pth"))
    return trainer, before


def test_nonfinite_losses_skip_steps_then_stop_with_checkpoint_intact(tmp_path, monkeypatch):
    def nan_loss(self, stats):
        stats["g_loss"] = stats["g_loss"] * float("nan")

    trainer, before = _poisoned_run(tmp_path, monkeypatch, "nan", "accumulate_generator_gradients", nan_loss)
    # Every generator step was skipped: its weights are still the checkpoint's.
    for key, value in before["generator"].items():
        assert torch.equal(value, trainer.generator.state_dict()[key]), key


def test_nan_gradient_with_finite_loss_is_not_applied(tmp_path, monkeypatch):
    def nan_gradient(self, stats):
        weight = next(p for p in self.discriminator.parameters() if p.grad is not None)
        weight.grad.view(-1)[0] = float("nan")  # the loss stays finite

    trainer, before = _poisoned_run(tmp_path, monkeypatch, "nangrad", "accumulate_discriminator_gradients",
                                    nan_gradient)
    assert trainer.weights_are_finite()
    for key, value in before["discriminator"].items():
        assert torch.equal(value, trainer.discriminator.state_dict()[key]), key


def test_evaluation_at_eval_freq_is_logged(tmp_path):
    config = tiny_config(tmp_path, "eval", max_steps=2, eval_freq=2, eval_metrics="mvc")
    assert train(0, 1, config) == 0
    lines = [json.loads(l) for l in (Path(config.output_dir) / "metrics.jsonl").read_text().splitlines()]
    evals = [l for l in lines if "eval" in l]
    assert len(evals) == 1 and evals[0]["step"] == 2
    assert 0 <= evals[0]["eval"]["mvc_nerf_l1"] < 1


def test_run_removes_stale_checkpoint_temp_files_and_logs_progress_lines(tmp_path, caplog):
    config = tiny_config(tmp_path, "hygiene", max_steps=4, log_interval=2)
    run = Path(config.output_dir)
    run.mkdir()
    stale = run / ".checkpoint.pth.k1ll3d.tmp"
    stale.write_bytes(b"half a checkpoint")
    unrelated = run / ".notes.tmp"
    unrelated.write_bytes(b"x")
    with caplog.at_level("INFO", logger="mvcgan.train"):
        assert train(0, 1, config) == 0
    assert not stale.exists() and unrelated.exists()
    # No bars (progress=False, and stderr is not a terminal under pytest): a line every log_interval steps.
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    assert [line.split()[1] for line in lines] == ["2/4", "4/4"], lines
    assert all("s/step" in line and "ETA" in line for line in lines)


@pytest.fixture(scope="module")
def two_step_run(tmp_path_factory):
    """A 2-step tiny run directory, trained without sample grids (read-only for the tests)."""
    config = tiny_config(tmp_path_factory.mktemp("two_steps"), max_steps=2)  # sample_interval=0
    assert train(0, 1, config) == 0
    return Path(config.output_dir)


def test_sample_interval_0_writes_no_sample_grids(two_step_run):
    """--sample_interval 0 means never: not during the run and not at its end either."""
    assert load_checkpoint(two_step_run)["step"] == 2
    assert not [p.name for p in two_step_run.glob("*_*.png")]


def test_a_resumed_run_says_where_from_and_times_its_own_first_step(two_step_run, tmp_path, caplog):
    with caplog.at_level("INFO", logger="mvcgan.train"):
        assert train(0, 1, tiny_config(tmp_path, "resumed", load_dir=str(two_step_run), max_steps=3)) == 0
    messages = [record.getMessage() for record in caplog.records]
    assert f"resumed from {two_step_run / 'checkpoint.pth'} at step 2" in messages
    line = next(m for m in messages if m.startswith("step 3/3"))
    assert float(line.split(" s/step")[0].split()[-1]) > 0, line  # not "0.00 s/step" from a clock started late


def test_skipped_file_warning_is_not_repeated_every_epoch_with_workers(tmp_path):
    """Loader workers live across epochs, so each remembers the unreadable files it met."""
    import logging

    import numpy as np
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((64, 64, 3), 60 * i, np.uint8)).save(folder / f"{i}.png")
    (folder / "3.png").write_bytes(b"not a png")  # 4 files: 2 batches of 2, every file in every epoch
    config = tiny_config(tmp_path, "skip", num_workers=2,
                         curriculum_overrides=dict(TINY, dataset="FFHQ", dataset_path=str(folder)))
    trainer = Trainer(0, 1, config, torch.device("cpu"))
    log = tmp_path / "workers.log"
    handler = logging.FileHandler(log)  # forked workers inherit it
    logging.getLogger("datasets").addHandler(handler)
    try:
        loader = trainer.make_loader(curriculums_metadata(trainer))
        for epoch in range(4):
            loader.sampler.set_position(epoch, 0)
            assert sum(1 for _ in loader) == 2
        del loader
    finally:
        logging.getLogger("datasets").removeHandler(handler)
        handler.close()
    warnings = log.read_text().count("Skipping unreadable image")
    assert 1 <= warnings <= 2, warnings  # at most once per worker, not once per epoch


def test_fp16_overflows_are_left_to_the_scaler_but_a_streak_stops_the_run(tmp_path, monkeypatch, device):
    """With a loss scaler (fp16 on CUDA, under autocast; a CPU GradScaler on the CPU) a NaN gradient is the
    scaler's to skip, and it lowers its scale; the step is still reported as skipped, and MAX_OVERFLOW_STEPS
    in a row stop the run."""
    import losses
    import training.faults

    monkeypatch.setattr(training.faults, "MAX_OVERFLOW_STEPS", 3)
    original = losses.MVCGANLoss.accumulate_generator_gradients

    def nan_gradient(self, *args, **kwargs):
        stats = original(self, *args, **kwargs)
        next(p for p in self.generator.parameters() if p.grad is not None).grad.view(-1)[0] = float("nan")
        return stats

    monkeypatch.setattr(losses.MVCGANLoss, "accumulate_generator_gradients", nan_gradient)
    trainer = Trainer(0, 1, tiny_config(tmp_path, "fp16", max_steps=5, precision="fp16"), device)
    trainer.scaler = torch.amp.GradScaler(device.type, init_scale=1024.0)
    trainer.loss.scaler = trainer.scaler
    before = {k: v.clone() for k, v in trainer.generator.state_dict().items()}
    with pytest.raises(FloatingPointError, match="3 consecutive steps"):
        trainer.run()
    assert trainer.step == 3 and trainer.scaler.get_scale() < 1024.0
    for key, value in before.items():  # the generator never took a NaN step
        assert torch.equal(value, trainer.generator.state_dict()[key]), key


def test_cpu_training_flushes_denormals(tmp_path):
    # Transmittance behind dense surfaces and the gradients through it fall below 1.2e-38, where
    # CPU arithmetic is many times slower; a CPU Trainer makes such values zero.
    torch.set_flush_denormal(False)  # process-wide: an earlier test's Trainer may have set it
    tiny = torch.tensor([1e-30]) * torch.tensor([1e-10])
    assert tiny.item() > 0  # subnormal, kept: the default
    try:
        Trainer(0, 1, tiny_config(tmp_path), torch.device("cpu"))
        assert (torch.tensor([1e-30]) * torch.tensor([1e-10])).item() == 0
        assert (torch.tensor([1e-30]) * torch.tensor([1e-7])).item() > 0  # normal floats are untouched
    finally:
        torch.set_flush_denormal(False)


def test_step_options_are_a_stages_values_typed_and_frozen():
    """What the loop reads of a stage (training/step_options.py): the curriculum's values, with the types the
    optimiser groups always held (FFHQ's integer weight decay stays an int), and read-only."""
    import dataclasses

    from training.step_options import StepOptions

    metadata = curriculums.extract_metadata(curriculums.get_curriculum("FFHQ"), 0)
    options = StepOptions.from_metadata(metadata)
    assert (options.batch_size, options.img_size, options.output_size) == \
        (metadata["batch_size"], metadata["img_size"], metadata["output_size"])
    assert options.weight_decay == 0 and type(options.weight_decay) is int
    assert options.betas == (0.0, 0.9) and all(type(b) is float for b in options.betas)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.gen_lr = 1.0


def test_every_rank_and_any_rank_in_one_process():
    from training.distributed import any_rank, every_rank

    cpu = torch.device("cpu")
    assert any_rank([True, False, 1, 0], cpu, 1) == [True, False, True, False]
    assert every_rank(True, cpu, 1) and not every_rank(False, cpu, 1)


# ------------------------------------------------------------- published stage mechanics (docs/METHOD.md §7)
def run_recording(tmp_path, monkeypatch, name, overrides, **config):
    """Train a tiny curriculum; record each step's alpha, generator learning rate and the loaders built."""
    loaders, lrs = [], []
    make_loader, train_step = Trainer.make_loader, Trainer.train_step

    def counting_make_loader(self, metadata):
        loaders.append(self.step)
        return make_loader(self, metadata)

    def recording_train_step(self, real, metadata, real_poses=None):
        stats = train_step(self, real, metadata, real_poses)
        lrs.append(self.optimizer_G.param_groups[0]["lr"])
        return stats

    monkeypatch.setattr(Trainer, "make_loader", counting_make_loader)
    monkeypatch.setattr(Trainer, "train_step", recording_train_step)
    globals_only = {k: v for k, v in TINY.items() if not isinstance(k, int)}
    config = tiny_config(tmp_path, name, curriculum_overrides={**globals_only, **overrides}, **config)
    assert train(0, 1, config) == 0
    records = [json.loads(line) for line in (Path(config.output_dir) / "metrics.jsonl").read_text().splitlines()]
    return [r["alpha"] for r in records], lrs, loaders, load_checkpoint(Path(config.output_dir) / "checkpoint.pth")


def test_a_stage_that_changes_only_a_learning_rate_keeps_the_loader_and_the_fade(tmp_path, monkeypatch):
    """As published: the fade restarts only where output_size changes, the loader is rebuilt only where
    batch_size does; learning rates follow the stage at once."""
    stages = {0: dict(TINY_STAGE), 3: dict(TINY_STAGE, gen_lr=1e-3), 7: {}, "fade_steps": 10,
              "synthetic_size": 64}
    alphas, lrs, loaders, state = run_recording(tmp_path, monkeypatch, "lr_only", stages, max_steps=6)
    assert alphas == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4, 0.5])  # no restart at step 3
    assert lrs == [2e-4] * 3 + [1e-3] * 3
    assert loaders == [0]  # one loader for the whole run
    assert (state["epoch"], state["sampler"]["batch"]) == (0, 6)  # the epoch went on through the stage


def test_a_batch_size_stage_rebuilds_the_loader_but_does_not_restart_the_fade(tmp_path, monkeypatch):
    stages = {0: dict(TINY_STAGE), 3: dict(TINY_STAGE, batch_size=4), 6: {}, "fade_steps": 10,
              "synthetic_size": 64}
    alphas, _, loaders, _ = run_recording(tmp_path, monkeypatch, "batch", stages)
    assert alphas == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4, 0.5])
    assert loaders == [0, 3]


def test_a_global_stage_key_applies_to_every_stage(tmp_path, monkeypatch):
    """As published, extract_metadata lets a global value win over the stages' (here batch_size 4)."""
    stages = {0: dict(TINY_STAGE), 3: dict(TINY_STAGE, output_size=16), 6: {}, "batch_size": 4, "synthetic_size": 64}
    config = tiny_config(tmp_path, "global", curriculum_overrides={**TINY, **stages})
    assert train(0, 1, config) == 0
    records = [json.loads(line) for line in (Path(config.output_dir) / "metrics.jsonl").read_text().splitlines()]
    assert {r["batch_size"] for r in records} == {4}


def test_the_fp16_loss_scale_never_stays_below_one(tmp_path, device):
    """As published (`if scaler.get_scale() < 1: scaler.update(1.)` before each step): a loss scale
    that fell below 1 is raised to 1 before the step's losses are scaled."""
    trainer = Trainer(0, 1, tiny_config(tmp_path, precision="fp16"), device)
    trainer.scaler = trainer.loss.scaler = torch.amp.GradScaler(device.type, init_scale=0.25, growth_interval=1000)
    scales = []
    trainer.loss.observe = lambda event, values: scales.append(trainer.scaler.get_scale())
    metadata = curriculums.extract_metadata(trainer.curriculum, 0)
    real = (torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1).to(device)
    trainer.scaler.scale(torch.ones(()))  # a scaler in use, as after a first step
    assert trainer.scaler.get_scale() == 0.25
    trainer.train_step(real, metadata)
    assert scales == [1.0, 1.0] and trainer.scaler.get_scale() == 1.0  # D phase and the G chunk saw scale 1
    trainer.scaler.update(0.5)  # an overflow streak pushed it below 1 again
    trainer.train_step(real, metadata)
    assert scales[-1] == 1.0 and trainer.scaler.get_scale() == 1.0
    trainer.scaler.update(8.0)  # above 1 it is the scaler's own business
    trainer.train_step(real, metadata)
    assert scales[-1] == 8.0


@pytest.mark.slow
@pytest.mark.parametrize("stopping", [True, False], ids=["during-a-stop", "without-a-stop"])
def test_a_loader_worker_killed_in_the_middle_of_a_step_ends_in_a_checkpoint(tmp_path, monkeypatch, stopping):
    """torch reports a dead loader worker from its SIGCHLD handler, as an exception in whatever the training
    process is doing (here: half-way through a step). Now the step completes and its checkpoint is saved:
    the run ends with exit code 0 when it was stopping anyway, else with LoaderFailed (one line in main.py)."""
    import os
    import signal
    import time

    import train as train_module

    config = tiny_config(tmp_path, num_workers=1, max_steps=5)
    trainer = Trainer(0, 1, config, torch.device("cpu"))
    original = trainer.train_step

    def train_step(real, metadata, real_poses=None):
        if trainer.step == 1:  # the second step: its worker dies now, while it runs
            os.kill(trainer._loader._iterator._workers[0].pid, signal.SIGKILL)
            time.sleep(0.5)  # SIGCHLD arrives in the middle of the step
            trainer.stop.requested = stopping
        return original(real, metadata, real_poses)

    monkeypatch.setattr(trainer, "train_step", train_step)
    if stopping:
        assert trainer.run() == 0
    else:
        with pytest.raises(train_module.LoaderFailed, match=r"a data loader worker died \(DataLoader worker \(pid "
                                                            r"\d+\) is killed by signal: Killed\); the checkpoint "
                                                            r"of step 2 is saved; continue with --resume auto"):
            trainer.run()
    assert load_checkpoint(config.output_dir)["step"] == 2


def test_a_run_that_ends_during_a_nonfinite_streak_names_its_real_last_checkpoint(tmp_path, monkeypatch, caplog):
    """It used to log "training finished at step 5; checkpoint in ..." with the checkpoint of step 2."""
    import losses

    overrides = {k: v for k, v in TINY.items() if not isinstance(k, int)}
    overrides.update({0: dict(TINY_STAGE), 40: {}})
    config = tiny_config(tmp_path, "streak", max_steps=2, curriculum_overrides=overrides)
    assert train(0, 1, config) == 0
    original = losses.MVCGANLoss.accumulate_generator_gradients

    def nan_loss(self, *args, **kwargs):
        stats = original(self, *args, **kwargs)
        stats["g_loss"] = stats["g_loss"] * float("nan")
        return stats

    monkeypatch.setattr(losses.MVCGANLoss, "accumulate_generator_gradients", nan_loss)
    resumed = tiny_config(tmp_path, "streak", load_dir=config.output_dir, curriculum_overrides=overrides,
                          max_steps=5)
    expected = (r"training reached its end at step 5 during a streak of 3 non-finite steps, so no checkpoint of "
                r"step 5 was written; last good checkpoint: .*checkpoint.pth \(step 2\)")
    with caplog.at_level("INFO", logger="mvcgan.train"), pytest.raises(FloatingPointError, match=expected):
        Trainer(0, 1, resumed, torch.device("cpu")).run()
    assert not [r for r in caplog.records if "training finished" in r.getMessage()]
    assert load_checkpoint(Path(config.output_dir))["step"] == 2


def test_a_training_step_at_each_precision_is_finite_and_trains(tmp_path, device):
    """A whole Trainer.train_step as training runs it: fp32 everywhere, fp16 (GradScaler) and bf16 autocast
    on CUDA, whose field is siren/fast.py's (impl auto -> recompute): finite losses, weights that move,
    float32 weights and optimiser state. fp16 may skip its first steps while the scaler finds its scale."""
    from siren.siren import resolve_impl

    precisions = ["fp32"] + (["fp16", "bf16"] if device.type == "cuda" else [])
    for precision in precisions:
        trainer = Trainer(0, 1, tiny_config(tmp_path, precision, precision=precision), device)
        assert trainer.amp_dtype == {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
        assert trainer.scaler.is_enabled() == (precision == "fp16")
        assert resolve_impl(trainer.generator.siren.impl, device) == ("recompute" if device.type == "cuda"
                                                                      else "cpu_lowmem")
        before = {k: v.clone() for k, v in trainer.generator.state_dict().items()}
        metadata = curriculums.extract_metadata(trainer.curriculum, 0)
        real = (torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1).to(device)
        steps = []
        while len(steps) < 16 and (not steps or steps[-1]["skipped"]):
            steps.append(trainer.train_step(real, metadata))
            trainer.step += 1
        assert not steps[-1]["skipped"], (precision, len(steps))
        for stats in steps:
            for key in ("d_loss", "r1", "g_loss", "photometric", "d_grad_norm", "g_grad_norm"):
                assert math.isfinite(stats[key]), (precision, key, stats[key])
        moved = [k for k, v in trainer.generator.state_dict().items() if not torch.equal(v, before[k])]
        assert any(k.startswith("siren.network") for k in moved), precision
        for p in trainer.generator.parameters():
            assert p.dtype == torch.float32 and p.device.type == device.type
        for state in trainer.optimizer_G.state.values():
            assert state["exp_avg"].dtype == torch.float32 and bool(torch.isfinite(state["exp_avg"]).all())


def test_a_checkpoint_restores_weights_optimisers_scaler_and_random_streams(tmp_path, device):
    """Save at the end of a run and load into a fresh Trainer on the same device: the weights, the Adam
    moments (on the device), the loss scaler and every RNG (the CUDA ones included) continue where the
    run stopped."""
    import random

    import numpy as np

    def draws():
        return (torch.randn(4), torch.randn(4, device=device).cpu(), random.random(), float(np.random.rand()))

    config = tiny_config(tmp_path, "first", max_steps=2)
    trainer = Trainer(0, 1, config, device)
    trainer.run()  # ends with save(): the RNG states are those of this moment
    expected = draws()
    resumed = Trainer(0, 1, tiny_config(tmp_path, "first", max_steps=2, load_dir=config.output_dir), device)
    assert not torch.equal(draws()[1], expected[1])  # a fresh Trainer reseeds: different draws
    resumed = Trainer(0, 1, tiny_config(tmp_path, "first", max_steps=2, load_dir=config.output_dir), device)
    resumed.load(resumed.spec.resume_path)
    got = draws()
    assert all(torch.equal(a, b) for a, b in zip(got[:2], expected[:2])) and got[2:] == expected[2:]
    assert resumed.step == 2
    for name, value in trainer.generator.state_dict().items():
        assert torch.equal(value, resumed.generator.state_dict()[name]), name
    for old, new in zip(trainer.optimizer_G.state.values(), resumed.optimizer_G.state.values()):
        assert new["exp_avg"].device.type == device.type and torch.equal(old["exp_avg"], new["exp_avg"])
    assert resumed.scaler.state_dict() == trainer.scaler.state_dict()


def test_a_checkpoint_trained_without_a_loss_scaler_resumes_in_fp16(tmp_path, device):
    """A run trained on the CPU, or in bf16/fp32, saves the empty state of a disabled GradScaler; resuming it
    in fp16 (on CUDA, the default precision) starts a fresh loss scale instead of failing in GradScaler."""
    first = tiny_config(tmp_path, "fp32", max_steps=1, precision="fp32")
    Trainer(0, 1, first, device).run()
    assert load_checkpoint(Path(first.output_dir))["scaler"] == {}
    resumed = Trainer(0, 1, tiny_config(tmp_path, "fp32", max_steps=2, precision="fp16",
                                        load_dir=first.output_dir), device)
    if not resumed.scaler.is_enabled():  # CPU: the fp16 scaler that CUDA would have
        resumed.scaler = resumed.loss.scaler = torch.amp.GradScaler(device.type)
    resumed.load(resumed.spec.resume_path)
    assert resumed.step == 1 and resumed.scaler.get_scale() == 2.0 ** 16


def test_the_signed_distance_width_follows_its_anneal_in_training_and_in_checkpoints(tmp_path, monkeypatch):
    """sdf_beta_start: the width narrows geometrically from sdf_beta_start to sdf_beta over
    sdf_beta_anneal_steps; the step's width is the one the field renders with (the trained generator and
    its EMA copies), and a checkpoint of that step is rebuilt with it."""
    from generators.generators import ImplicitGenerator3d
    from utils.checkpoint import load_generator, save_checkpoint

    overrides = dict(TINY, sdf_beta=0.01, sdf_beta_start=0.04, sdf_beta_anneal_steps=4, clamp_mode="relu")
    trainer = Trainer(0, 1, tiny_config(tmp_path, curriculum_overrides=overrides), torch.device("cpu"))
    widths = []
    sdf_density = ImplicitGenerator3d._sdf_density
    monkeypatch.setattr(ImplicitGenerator3d, "_sdf_density",
                        lambda self, head, points: widths.append(self.sdf_beta) or sdf_density(self, head, points))
    metadata = curriculums.extract_metadata(trainer.curriculum, 0)
    real = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    for step, width in ((0, 0.04), (2, 0.02), (4, 0.01), (5, 0.01)):
        trainer.step, widths[:] = step, []
        trainer.train_step(real, metadata)
        assert widths and all(w == pytest.approx(width) for w in widths)
        assert all(ema.module.sdf_beta == pytest.approx(width) for ema in trainer.emas)
    save_checkpoint(tmp_path / "at_step_2.pth", {"generator": trainer.generator.state_dict(),
                                                  "curriculum": trainer.curriculum, "step": 2})
    assert load_generator(tmp_path / "at_step_2.pth")[0].sdf_beta == pytest.approx(0.02)
    with pytest.raises(ValueError, match="sdf_beta_start needs"):
        curriculums.validate_curriculum(dict(trainer.curriculum, sdf_beta_anneal_steps=0))
