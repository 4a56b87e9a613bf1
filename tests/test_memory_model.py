"""`batch_split: "auto"` (utils/memory_model.py): the memory model, the choice of chunks, and a run with it."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

import curriculums
from train import TrainConfig, Trainer, train
from utils.memory_model import (GB, MEMORY_MODELS, USABLE_SHARE, auto_batch_split, choose_batch_split,
                                fit_memory_model, usable_memory_bytes)


def test_the_fewest_chunks_that_fit_and_divide_the_batch():
    # 10 GB budget, 2 GB fixed, 1 GB per image: at most 8 images per chunk
    assert choose_batch_split(8, 10 * GB, 1 * GB, 2 * GB) == 1
    assert choose_batch_split(56, 10 * GB, 1 * GB, 2 * GB) == 7       # 7 chunks of 8
    assert choose_batch_split(52, 10 * GB, 1 * GB, 2 * GB) == 13      # 7 does not divide 52: 13 chunks of 4
    assert choose_batch_split(17, 10 * GB, 1 * GB, 2 * GB) == 17      # a prime: one image per chunk
    assert choose_batch_split(56, 10 * GB, 0.25 * GB, 2 * GB) == 2    # 32 images fit: 2 chunks of 28
    # not even one image fits: one image per chunk (the caller warns)
    assert choose_batch_split(12, 2.5 * GB, 1 * GB, 2 * GB) == 12
    with pytest.raises(ValueError):
        choose_batch_split(0, 10 * GB, 1 * GB, 2 * GB)


def test_the_model_reproduces_the_measurements_it_was_calibrated_on():
    """CPU fp32 peak RSS of bench_step (utils/memory_model.py's docstring), within 0.2 GB."""
    model = MEMORY_MODELS[("cpu", "fp32")]
    stage = dict(img_size=64, num_steps=16, hidden_dim=256)
    for batch, split, output, measured in [(1, 1, 64, 2.60), (2, 1, 64, 3.98), (4, 1, 64, 6.83), (8, 1, 64, 12.38),
                                           (1, 1, 256, 3.65), (2, 1, 256, 5.96), (2, 2, 256, 4.04)]:
        modelled = model.peak_bytes(dict(stage, batch_size=batch, output_size=output), split) / GB
        assert modelled == pytest.approx(measured, abs=0.2), (batch, split, output)
    # more chunks, less memory; more samples per ray, more memory
    paper = dict(stage, batch_size=56, output_size=64)
    assert model.peak_bytes(paper, 4) < model.peak_bytes(paper, 2) < model.peak_bytes(paper, 1)
    assert model.peak_bytes(dict(paper, num_steps=24), 4) > model.peak_bytes(paper, 4)


def test_auto_picks_chunks_for_the_papers_stage_on_an_11_and_a_24_gb_card():
    metadata = curriculums.extract_metadata(curriculums.get_curriculum("FFHQ"), 0)  # batch 56, 64 px, 16 samples
    model = MEMORY_MODELS[("cuda", "fp16")]
    for card_gb in (11, 24, 80):
        choice = auto_batch_split(metadata, torch.device("cuda"), "fp16", budget_bytes=card_gb * GB * USABLE_SHARE)
        assert 56 % choice.batch_split == 0
        assert choice.peak_bytes <= choice.budget_bytes
        if choice.batch_split > 1:  # the next smaller split that divides 56 would not fit
            fewer = max(s for s in range(1, choice.batch_split) if 56 % s == 0)
            assert model.peak_bytes(metadata, fewer) > choice.budget_bytes
        assert "batch_split auto" in choice.describe() and "fits" in choice.describe()
    small = auto_batch_split(metadata, torch.device("cuda"), "fp16", budget_bytes=11 * GB * USABLE_SHARE)
    large = auto_batch_split(metadata, torch.device("cuda"), "fp16", budget_bytes=24 * GB * USABLE_SHARE)
    assert small.batch_split > large.batch_split


def test_usable_memory_is_read_on_cpu():
    usable, how = usable_memory_bytes(torch.device("cpu"))
    assert usable > 0 and "available RAM" in how


def test_the_model_is_fitted_from_bench_step_results():
    """Two bench_step lines (one stage size, chunks of 14 and 56) give the line: a model that
    reproduces both, with the measured slope as its per-image bytes."""
    base = MEMORY_MODELS[("cuda", "fp16")]
    common = dict(batch_size=56, img_size=64, num_steps=16, output_size=64, hidden_dim=256)
    records = [dict(common, batch_split=4, batch_split_used=4, cuda_max_allocated_gb=9.0),
               dict(common, batch_split=1, batch_split_used=1, cuda_max_allocated_gb=30.0)]
    fitted = fit_memory_model(records, base)
    assert fitted.peak_bytes(common, 4) / GB == pytest.approx(9.0)
    assert fitted.peak_bytes(common, 1) / GB == pytest.approx(30.0)
    assert fitted.chunk_bytes_per_image(common) / GB == pytest.approx(21.0 / 42)
    with pytest.raises(ValueError, match="two or more chunk sizes"):
        fit_memory_model(records[:1], base)


def test_auto_is_validated_with_the_curriculum():
    curriculum = curriculums.apply_overrides(curriculums.get_curriculum("FFHQ"), {"0.batch_split": "auto"})
    curriculums.validate_curriculum(curriculum)
    assert curriculum[0]["batch_split"] == "auto"
    curriculums.apply_overrides(curriculum, {"0.batch_split": 8})  # and back to a number
    curriculums.validate_curriculum(curriculum)
    with pytest.raises(ValueError, match="expected int"):
        curriculums.apply_overrides(curriculums.get_curriculum("FFHQ"), {"0.batch_split": "automatic"})
    for bad in (0, -2, 2.5, "half"):
        curriculum = curriculums.get_curriculum("FFHQ")
        curriculum[0]["batch_split"] = bad
        with pytest.raises(ValueError, match="batch_split must be a positive integer or 'auto'"):
            curriculums.validate_curriculum(curriculum)


TINY_AUTO = {0: dict(batch_size=4, num_steps=4, img_size=8, output_size=8, batch_split="auto", gen_lr=2e-4,
                     disc_lr=4e-4, pos_lambda=15, reproj_lambda=1),
             2: {}, "hidden_dim": 16, "decoder_channels": (16, 16, 8, 8), "disc_width_factor": 0.0625,
             "synthetic_size": 16}


def test_a_run_with_auto_chooses_logs_and_trains_with_the_split(tmp_path, monkeypatch, caplog):
    """With a budget that holds two of the four images per chunk, the run trains in 2 chunks and says so."""
    import utils.memory_model as memory_model

    model = MEMORY_MODELS[("cpu", "fp32")]
    metadata = curriculums.extract_metadata(curriculums.apply_overrides(
        curriculums.get_curriculum("Synthetic"), TINY_AUTO), 0)
    budget = (model.fixed + 4 * model.batch_bytes_per_image(metadata) + 2.5 * model.chunk_bytes_per_image(metadata))
    monkeypatch.setattr(memory_model, "usable_memory_bytes", lambda device: (budget / USABLE_SHARE, "a test budget"))
    config = TrainConfig(curriculum="Synthetic", output_dir=str(tmp_path / "run"), sample_interval=0,
                         model_save_interval=0, num_workers=0, log_interval=1, progress=False,
                         curriculum_overrides=TINY_AUTO)
    chunk_sizes = []
    original = Trainer.train_step

    def recording(self, real, metadata, real_poses=None):
        stats = original(self, real, metadata, real_poses)
        chunk_sizes.append(real.shape[0] // stats["batch_split"])
        return stats

    monkeypatch.setattr(Trainer, "train_step", recording)
    with caplog.at_level(logging.INFO, logger="mvcgan.train"):
        assert train(0, 1, config) == 0
    assert chunk_sizes == [2, 2]
    records = [json.loads(line) for line in (Path(config.output_dir) / "metrics.jsonl").read_text().splitlines()]
    assert {r["batch_split"] for r in records if "batch_split" in r} == {2}
    logged = [r.getMessage() for r in caplog.records if "batch_split auto" in r.getMessage()]
    assert len(logged) == 1 and "2 chunks" in logged[0] and "a test budget" in logged[0]


def test_main_accepts_auto_from_the_command_line(tmp_path):
    import main

    args = main.parse_args(["--curriculum", "Synthetic", "--output_dir", str(tmp_path / "run"), "--device", "cpu",
                            "--set", "0.batch_split=auto", "--set", "800.batch_split=auto"])
    spec, _ = main.prepare_run(args, world_size=1)
    assert spec.curriculum[0]["batch_split"] == spec.curriculum[800]["batch_split"] == "auto"
    bad = main.parse_args(["--curriculum", "Synthetic", "--output_dir", str(tmp_path / "bad"), "--device", "cpu",
                           "--set", "0.batch_split=0"])
    with pytest.raises(ValueError, match="batch_split must be a positive integer or 'auto'"):
        main.prepare_run(bad, world_size=1)
