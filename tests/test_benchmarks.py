"""The timing scripts run and print what the README and docs/ quote (tiny sizes; the measurements are benchmarks)."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import pytest  # noqa: E402
import torch  # noqa: E402

import bench_demo  # noqa: E402
import bench_loader  # noqa: E402
import bench_step  # noqa: E402
import bench_viewer  # noqa: E402
import bench_warp_signal  # noqa: E402
from curriculums import get_curriculum  # noqa: E402
from utils.checkpoint import save_checkpoint  # noqa: E402


def test_bench_step_chooses_auto_chunks_and_reports_the_modelled_memory(capsys):
    """--batch_split auto is utils/memory_model.py's choice (on this machine's memory: one chunk for a tiny
    step), and every line carries what the memory model predicts next to the measured peak."""
    bench_step.main(["--curriculum", "Synthetic", "--img_size", "8", "--num_steps", "4", "--output_size", "8",
                     "--batch_size", "2", "--batch_split", "auto", "--iterations", "1", "--threads", "1"])
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["batch_split"] == "auto" and record["batch_split_used"] == 1
    assert record["hidden_dim"] == 64 and 1.0 < record["modelled_peak_gb"] < 2.0  # mostly the fixed 1.18 GB
    with pytest.raises(SystemExit) as info:
        bench_step.main(["--batch_split", "0"])
    assert info.value.code == 2 and "positive integer or 'auto'" in capsys.readouterr().err


def test_bench_step_prints_one_json_line_with_the_breakdown(capsys):
    bench_step.main(["--curriculum", "Synthetic", "--img_size", "8", "--num_steps", "4", "--output_size", "8",
                     "--iterations", "1", "--threads", "1"])
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["sec_per_step_best"] > 0 and record["peak_rss_gb"] > 0
    for part in ("d_generate", "d_real_r1", "d_backward", "g_forward", "g_backward", "optimizer_ema"):
        assert record["parts_s"][part] >= 0, part
    assert all(math.isfinite(v) for v in record["first_step_losses"].values())


def test_fresh_allocation_counter_counts_new_large_outputs_only():
    x = torch.zeros(1000)  # 4000 bytes
    with bench_step.FreshAllocationCounter(threshold=4000) as counter:
        y = x + 1            # new: counted
        x.add_(1)            # in place: not new memory
        x.view(10, 100)      # a view: not new memory
        torch.sin(x, out=y)  # out=: not new memory
        x[:10] * 2           # new, but under the threshold
    assert counter.total == 4000


@pytest.mark.slow
def test_bench_demo_scores_numbered_checkpoints_in_step_order(tmp_path, tiny_generator, capsys):
    state = tiny_generator.state_dict()

    def write(name, step):
        save_checkpoint(tmp_path / name, {"generator": state, "generator_ema": state, "step": step,
                                          "curriculum": get_curriculum("Synthetic"), "curriculum_name": "Synthetic"})

    # written out of order: the table must still be in step order; the run's last checkpoint
    # (step 1400, not a multiple of the interval) is scored too, a duplicate of 1000 is not
    for name, step in (("checkpoint_001000.pth", 1000), ("checkpoint_000200.pth", 200), ("checkpoint.pth", 1400)):
        write(name, step)
    rows = bench_demo.score(tmp_path, started=None, num_samples=8)
    assert [row["step"] for row in rows] == [200, 1000, 1400]
    write("checkpoint.pth", 1000)
    assert [row["step"] for row in bench_demo.score(tmp_path, started=None, num_samples=8)] == [200, 1000]
    # untrained, with Synthetic's sphere prior: exactly the prior-alone baseline
    assert rows[0]["iou_ceiling"] > 0.5 and rows[0]["iou"] == rows[0]["iou_prior"] > rows[0]["iou_floor"]
    bench_demo.print_table(rows)
    printed = capsys.readouterr().out
    assert "ceiling (real vs real)" in printed and "sphere prior alone" in printed


def test_bench_warp_signal_separates_true_depth_from_a_sphere_only_at_higher_resolution(capsys):
    rows = bench_warp_signal.main(["--sizes", "16,64", "--num_heads", "6"])
    low, high = rows
    # At 64 px the warp ranks the true depth first, the sphere prior next, a flat wall last...
    assert high["true"] < high["sphere"] < high["plane"] < high["none"]
    # ...and tells the true shape from the sphere by far more (relative to the true depth's
    # own loss) than at the demo's 16 px NeRF, where both score within a few per cent.
    excess = lambda row: (row["sphere"] - row["true"]) / row["true"]
    assert excess(high) > 0.2 and excess(low) < excess(high) / 3
    printed = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()[-2:]]
    assert [row["size"] for row in printed] == [16, 64]


def test_bench_corrections_measures_what_method_md_quotes(capsys):
    import bench_corrections

    assert bench_corrections.main() == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    ratios = record["photometric_gradient_ratio_unit_over_shifted"]
    assert all(1.0 < r < 4.0 for r in ratios.values())  # the correction always pulls harder
    assert ratios["texture_0.05"] > ratios["texture_1.0"]  # most on low contrast
    warp = record["warp_pinhole_vs_ray_norm_at_64px"]
    assert 0 < warp["mean_px"] < warp["max_px"] <= 0.5
    for dataset in ("FFHQ", "Cat"):
        assert 0 < record["real_resize_antialias_vs_nearest_at_64px"][dataset]["mean"] < 0.2


def test_bench_viewer_times_full_and_moving_frames(tiny_checkpoint, capsys):
    record = bench_viewer.main(["--path", str(tiny_checkpoint), "--frames", "1", "--threads", "1"])
    assert record["full"]["nerf"] == 16 and record["moving"]["nerf"] == 8
    for kind in ("full", "moving"):
        assert 0 < record[kind]["render_s_median"] <= record[kind]["frame_s_median"]
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["threads"] == 1
    random = bench_viewer.main(["--curriculum", "Synthetic", "--step", "800", "--frames", "1", "--threads", "1"])
    assert random["full"]["output"] == 32 and random["checkpoint"] == "random Synthetic at step 800"


@pytest.mark.slow
def test_fault_check_kills_during_a_checkpoint_write_and_resumes(tmp_path, capsys):
    """benchmarks/fault_check.py, one run of the kill -9 case (tests/test_main.py runs its group-signal case)."""
    import fault_check

    assert fault_check.main(["--runs", "1", "--cases", "kill_during_write", "--output_dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "kill_during_write 1/1: ok: killed " in out
    assert "kill -9 during a checkpoint write: 1/1 runs left a loadable checkpoint that --resume auto continued" in out
    assert json.loads(out.strip().splitlines()[-1])["fault_check"] == {
        "kill_during_write": {"runs": 1, "kept_a_resumable_checkpoint": 1}}


@pytest.mark.slow
def test_fault_check_probes_the_overwrite_and_hang_cases(tmp_path, capsys):
    """benchmarks/fault_check.py's tool cases (issue 32): import_checkpoint.py never replaces a trained
    checkpoint or its own input, viewer.py --host of an address this machine lacks ends at once."""
    import fault_check

    assert fault_check.main(["--runs", "1", "--cases", "import_overwrite,viewer_bad_host",
                             "--output_dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "import_overwrite 1/1: ok: " in out and "viewer_bad_host 1/1: ok: " in out
    assert json.loads(out.strip().splitlines()[-1])["fault_check"] == {
        "import_overwrite": {"runs": 1, "behaved": 1}, "viewer_bad_host": {"runs": 1, "behaved": 1}}


@pytest.mark.slow
def test_fault_check_probes_the_rendering_scripts_overwrite_case(tmp_path, capsys):
    """benchmarks/fault_check.py's render_overwrite case (issue 32): render_multiview_image.py and extract_shapes.py
    keep an earlier run's files unless --overwrite."""
    import fault_check

    assert fault_check.main(["--runs", "1", "--cases", "render_overwrite", "--output_dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "render_overwrite 1/1: ok: an earlier image_0.png and shape_0.ply kept by both scripts" in out
    assert json.loads(out.strip().splitlines()[-1])["fault_check"] == {"render_overwrite": {"runs": 1, "behaved": 1}}


@pytest.mark.slow
def test_bench_inversion_scores_held_out_heads_and_refuses_training_heads(tmp_path, tiny_generator, capsys):
    import bench_inversion

    state = tiny_generator.state_dict()
    path = tmp_path / "checkpoint.pth"  # the 16 -> 32 px stage after its fade-in: one trained decoder block
    save_checkpoint(path, {"generator": state, "generator_ema": state, "step": 900,
                           "curriculum": get_curriculum("Synthetic"), "curriculum_name": "Synthetic"})
    summary = bench_inversion.main(["--path", str(path), "--num_heads", "1", "--variants", "mean,camera_codes",
                                    "--search_steps", "1", "--steps", "2", "--threads", "1",
                                    "--example_dir", str(tmp_path)])
    assert set(summary) == {"mean", "camera_codes"}
    for scores in summary.values():
        assert scores["pose_error_deg"] >= 0 and scores["held_out_psnr"] > 0 and 0 < scores["depth_error"] < 1
    # the fit moved away from the mean codes: the input view is reconstructed better
    assert summary["camera_codes"]["input_psnr"] > summary["mean"]["input_psnr"]
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith('{"variant"')]
    assert [line["variant"] for line in lines] == ["mean", "camera_codes"]
    from PIL import Image
    with Image.open(tmp_path / "example.png") as figure:  # truth + one fitted row; 1 + 3 images + 3 depths
        assert figure.size == (7 * 32, 2 * 32)
    with pytest.raises(SystemExit, match="training seed"):
        bench_inversion.main(["--path", str(path), "--held_out_seed", "0", "--num_heads", "1"])


def _recording_bench_inversion(monkeypatch):
    """bench_inversion with its held-out truths and the settings invert() gets recorded."""
    import bench_inversion
    import inversion.fitting

    truths, settings = [], []

    class RecordedTruth(bench_inversion.Truth):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            truths.append(self)

    real_invert = inversion.fitting.invert

    def invert(generator, target, options, chosen, **kwargs):
        settings.append(chosen)
        return real_invert(generator, target, options, chosen, **kwargs)

    monkeypatch.setattr(bench_inversion, "Truth", RecordedTruth)
    monkeypatch.setattr(inversion.fitting, "invert", invert)
    return bench_inversion, truths, settings


def test_bench_inversion_keeps_the_synthetic_held_out_views_and_search_starts(tmp_path, tiny_generator, monkeypatch):
    """Synthetic (h_stddev 0.3, v_stddev 0.155): held-out yaws mean -0.3, 0, +0.3 and InversionSettings'
    default starts, exactly, so the numbers in docs/ stay those of the same measurement."""
    bench_inversion, truths, settings = _recording_bench_inversion(monkeypatch)
    curriculum = get_curriculum("Synthetic")
    path = tmp_path / "checkpoint.pth"
    state = tiny_generator.state_dict()
    save_checkpoint(path, {"generator": state, "generator_ema": state, "step": 0, "curriculum": curriculum,
                           "curriculum_name": "Synthetic"})
    bench_inversion.main(["--path", str(path), "--num_heads", "1", "--variants", "camera_codes",
                          "--search_steps", "0", "--steps", "1", "--threads", "1"])
    h, v = curriculum["h_mean"], curriculum["v_mean"]
    assert truths[0].views == [(h - 0.3, v), (h + 0.0, v), (h + 0.3, v)]
    assert settings[0].yaw_starts == (-0.4, -0.2, 0.0, 0.2, 0.4)
    assert settings[0].pitch_starts == (-0.15, 0.0, 0.15)
    # the first held-out head is index 0 of --held_out_seed 1000, at its own pose, as before
    from synthetic_heads import Synthetic
    assert (truths[0].index, (truths[0].yaw, truths[0].pitch)) == (
        0, Synthetic(32, curriculum, seed=1000).pose_of(0))


@pytest.mark.slow
def test_bench_inversion_holds_out_new_poses_of_one_critter_with_wide_views_and_starts(tmp_path, monkeypatch, capsys):
    """A Critters checkpoint with synthetic_objects=1 is accepted; its held-out images are the training
    critter at poses the training set never drew; held-out yaws are the mean +-1 h_stddev and the search
    starts scale with the pose spread (yaw x 1.2 / 0.3, pitch x 0.15 / 0.155); --set still overrides."""
    from curriculums import extract_metadata
    from generators.generators import build_generator
    from synthetic_heads import Critters

    bench_inversion, truths, settings = _recording_bench_inversion(monkeypatch)
    curriculum = {**get_curriculum("OneCritter"), "synthetic_size": 16}  # a small training set to check against
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        state = build_generator(extract_metadata(curriculum, 0)).eval().state_dict()
    path = tmp_path / "checkpoint.pth"
    save_checkpoint(path, {"generator": state, "generator_ema": state, "step": 0, "curriculum": curriculum,
                           "curriculum_name": "OneCritter"})
    shown = []
    real_figure = bench_inversion.example_figure
    monkeypatch.setattr(bench_inversion, "example_figure",
                        lambda truth, *a: shown.append(truth) or real_figure(truth, *a))
    bench_inversion.main(["--path", str(path), "--num_heads", "2", "--variants", "mean,camera_codes",
                          "--search_steps", "0", "--steps", "1", "--threads", "1", "--example_dir", str(tmp_path),
                          "--example_head", "1",  # not the most turned (index 16, 0.80 rad)
                          "--held_out_seed", "0"])  # the training seed: unused with synthetic_objects > 0
    assert [t.index for t in shown] == [17] and (tmp_path / "example.png").is_file()
    assert "the 1 training object(s) at new poses" in capsys.readouterr().out
    assert [t.index for t in truths] == [16, 17]
    training = Critters(16, extract_metadata(curriculum, 0))
    training_poses = {training.pose_of(i) for i in range(16)}
    h, v = curriculum["h_mean"], curriculum["v_mean"]
    for truth in truths:
        assert (truth.yaw, truth.pitch) not in training_poses
        # the training critter (index 0's) at the held-out pose: the same picture
        assert torch.equal(truth.input[0], (training.render(0, truth.yaw, truth.pitch)["image"] + 1) / 2)
        assert truth.views == [(h - 1.2, v), (h + 0.0, v), (h + 1.2, v)]
    assert settings[0].yaw_starts == (-1.6, -0.8, 0.0, 0.8, 1.6)
    assert settings[0].pitch_starts == (-0.145161, 0.0, 0.145161)
    settings.clear()
    bench_inversion.main(["--path", str(path), "--num_heads", "1", "--variants", "camera_codes",
                          "--search_steps", "0", "--steps", "1", "--threads", "1", "--set", "yaw_starts=(0.0, 3.0)"])
    assert settings[0].yaw_starts == (0.0, 3.0) and settings[0].pitch_starts == (-0.145161, 0.0, 0.145161)
    # a data set that is not procedural is refused with one error line
    save_checkpoint(path, {"generator": state, "generator_ema": state, "step": 0, "curriculum_name": "OneCritter",
                           "curriculum": {**curriculum, "dataset": "CelebAHQ"}})
    with pytest.raises(SystemExit, match="^error: .*procedural data set"):
        bench_inversion.main(["--path", str(path), "--num_heads", "1"])


def test_bench_loader_measures_raw_and_prepared_and_the_workers_each_needs(tmp_path, capsys):
    """--smoke: 2 images of 64², one stage size; the table's columns and the JSON line docs/PERFORMANCE.md quotes."""
    result = bench_loader.main(["--smoke", "--work_dir", str(tmp_path), "--step_seconds", "0.5,2"])
    printed = capsys.readouterr().out
    assert json.loads(printed.strip().splitlines()[-1]) == result
    assert "| stage | size | batch | raw img/s (per CPU s) | prepared_png img/s (per CPU s) |" in printed
    for curriculum, fmt in (("CelebAHQ", "jpg"), ("FFHQ", "png")):
        record = result["curricula"][curriculum]
        assert record["raw_format"] == fmt and set(record["tool"]) == {"png", "npy"}
        (row,) = record["stages"]
        assert row["size"] == 64 and row["batch"] == 56  # the published stage-0 batch
        for label in ("raw", "prepared_png", "prepared_npy"):
            rate = row[f"{label}_per_cpu_s"]
            assert rate > 0 and row[f"{label}_per_s"] > 0
            assert row[f"workers_{label}"] == {t: bench_loader.workers_needed(56, float(t), rate) for t in ("0.5", "2")}
    assert bench_loader.workers_needed(56, 0.5, 50.0) == 3 and bench_loader.workers_needed(28, 2.0, 1000.0) == 1


def test_bench_fit_writes_its_scores_a_checkpoint_the_tools_read_and_the_figure(tmp_path, capsys):
    import bench_fit
    from utils.checkpoint import load_generator

    out = tmp_path / "fit"
    assert bench_fit.main(["--steps", "2", "--eval_every", "1", "--views", "4", "--batch_size", "2",
                           "--num_samples", "4", "--output", str(out)]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2]
    assert {"synthetic_iou", "synthetic_depth_vs_trivial", "synthetic_iou_best_trivial"} <= set(rows[-1]["eval"])
    generator, curriculum, _ = load_generator(out / "checkpoint.pth")
    assert curriculum["synthetic_objects"] == 1 and generator.density_scale == curriculum["density_scale"]
    assert (out / "truth_vs_fitted.png").stat().st_size > 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert printed[-1]["step"] == 2
    assert bench_fit.main(["--steps", "0", "--output", str(tmp_path / "bad")]) == 2
    assert bench_fit.main(["--set", "no_such_key=1", "--output", str(tmp_path / "bad")]) == 2
    assert "error:" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_bench_fit_replays_the_signed_distance_anneal_and_saves_the_fitted_width(tmp_path, monkeypatch):
    """With sdf_beta_start, fit step k renders with the training loop's width at step k, and the checkpoint
    records the width the field was fitted to as a constant (its step is 0), so the tools rebuild it with that."""
    import bench_fit
    from generators.generators import ImplicitGenerator3d
    from utils.checkpoint import load_generator

    widths = []
    sdf_density = ImplicitGenerator3d._sdf_density
    monkeypatch.setattr(ImplicitGenerator3d, "_sdf_density", lambda self, head, points:
                        widths.append((torch.is_grad_enabled(), self.sdf_beta)) or sdf_density(self, head, points))
    out = tmp_path / "fit"
    assert bench_fit.main(["--steps", "2", "--eval_every", "2", "--views", "4", "--batch_size", "2", "--num_samples",
                           "4", "--output", str(out), "--set", "sdf_beta=0.01", "--set", "clamp_mode=relu",
                           "--set", "sdf_beta_start=0.04", "--set", "sdf_beta_anneal_steps=4"]) == 0
    trained = [width for grad, width in widths if grad]
    assert trained[0] == pytest.approx(0.04 * 0.25 ** 0.25) and trained[-1] == pytest.approx(0.02)
    generator, curriculum, step = load_generator(out / "checkpoint.pth")
    assert step == 0 and curriculum["sdf_beta"] == pytest.approx(0.02) and curriculum["sdf_beta_start"] == 0
    assert generator.sdf_beta == pytest.approx(0.02)


def test_the_true_critter_rendered_by_the_generator_matches_its_ray_cast_truth_given_enough_samples(capsys):
    """bench_fit --oracle: the true object as the field, through the generator's cameras, sampling and integration.
    A mismatch of cameras, rays or depth convention between the data set and the renderer would show here
    without any training; and the score must depend on the samples as measured (docs/EXPERIMENTS.md:
    14 samples 0.86 IoU, 1.6x the best trivial depth error; 48 samples 0.99, 0.26x)."""
    import bench_fit
    from curriculums import extract_metadata

    metadata = extract_metadata(bench_fit.fit_curriculum("Critters", 1), 0)
    coarse = bench_fit.oracle_scores(metadata, num_samples=24)
    fine = bench_fit.oracle_scores(dict(metadata, num_steps=48), num_samples=24)
    assert fine["synthetic_iou"] > 0.95 and fine["synthetic_depth_vs_trivial"] < 0.5
    assert coarse["synthetic_iou"] < 0.92 and coarse["synthetic_depth_vs_trivial"] > 1.0
    with pytest.raises(ValueError, match="one object"):
        bench_fit.oracle_scores(dict(metadata, synthetic_objects=0), num_samples=4)
    assert bench_fit.main(["--oracle", "--num_samples", "4", "--set", "num_steps=6"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["num_steps"] == 6 and 0 <= printed["iou"] <= 1


def test_bench_ladder_scores_a_family_runs_checkpoints_with_the_matched_metric_once(tmp_path, capsys, monkeypatch):
    """The family rung scores every numbered checkpoint and the last one with synthetic_matched (through
    fid_evaluation.py, appending to metrics.jsonl), reads those rows back in step order, draws the curves, and
    does not score a checkpoint twice."""
    import bench_ladder
    from curriculums import extract_metadata
    from generators.generators import build_generator

    curriculum = dict(get_curriculum("Critters"), hidden_dim=16)
    torch.manual_seed(0)
    state = build_generator(extract_metadata(curriculum, 0)).state_dict()
    run = tmp_path / "family_mvc_s0_t1"
    for name, step in (("checkpoint_000800.pth", 800), ("checkpoint.pth", 1000)):
        save_checkpoint(run / name, {"generator": state, "generator_ema": state, "step": step,
                                     "curriculum": curriculum, "curriculum_name": "Critters"})
    (run / "metrics.jsonl").write_text(json.dumps({"step": 10, "g_loss": 1.0}) + "\n")
    argv = ["--rung", "family", "--seeds", "0", "--score_only", "--output_root", str(tmp_path), "--num_samples", "8"]
    assert bench_ladder.main(argv) == 0
    printed = capsys.readouterr().out
    rows = bench_ladder.evaluations(run, "synthetic_matched")
    assert [row["step"] for row in rows] == [800, 1000]
    assert rows[-1]["depth_vs_trivial"] > 1 and "iou_ceiling" in rows[-1] and "aligned_iou" in rows[-1]
    assert "target depth_vs_trivial <= 0.5: met by 0 of 1 runs" in printed
    assert (tmp_path / "family_curves.png").exists() and (run / "truth_vs_generated.png").exists()
    monkeypatch.setattr(bench_ladder.subprocess, "run", lambda *a, **k: pytest.fail("scored twice"))
    assert bench_ladder.main(argv) == 0
