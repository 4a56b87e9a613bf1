"""Tests for fid_evaluation.py, the command line of the metrics package: output, run-directory
logging, usage errors and exit codes. CPU only, no downloads. (The metrics: test_metrics.py.)"""
import json
import math

import pytest
from PIL import Image

import curriculums
import fid_evaluation as fe
from metrics import inception
from utils.checkpoint import save_checkpoint


def score(argv, capsys):
    """fid_evaluation.main(argv), which must exit with 0: the record it printed as its last line (the
    JSON line scripts read), and all the lines it printed."""
    code = fe.main(argv)
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 0, lines
    return json.loads(lines[-1]), lines


@pytest.fixture
def run_dir(tmp_path, tiny_generator):
    folder = tmp_path / "run"
    state = tiny_generator.state_dict()
    save_checkpoint(folder / "checkpoint.pth", {"step": 7, "curriculum": curriculums.get_curriculum("Synthetic"),
                                                "curriculum_name": "Synthetic", "generator": state,
                                                "generator_ema": state})
    return folder


def test_cli_prints_json_and_appends_to_run_metrics(run_dir, capsys):
    parsed, _ = score(["--path", str(run_dir / "checkpoint.pth"), "--metrics", "mvc", "--num_mvc", "2",
                       "--device", "cpu", "--num_workers", "0"], capsys)
    assert parsed["step"] == 7 and parsed["psi"] == 1.0 and parsed["ema"] is True
    assert parsed["checkpoint"].endswith("checkpoint.pth")
    assert math.isfinite(parsed["mvc_nerf_l1"])
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [parsed]


def test_cli_missing_checkpoint_is_a_usage_error(tmp_path, capsys):
    """Exit code 2, like render_multiview_image.py and extract_shapes.py for the same mistake."""
    assert fe.main(["--path", str(tmp_path / "missing.pth"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "checkpoint not found" in err


def test_cli_png_is_not_a_checkpoint(tmp_path, capsys):
    Image.new("RGB", (4, 4)).save(tmp_path / "photo.png")
    assert fe.main(["--path", str(tmp_path / "photo.png"), "--metrics", "mvc", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "not a checkpoint" in err and "PNG" in err and "weights_only" not in err


@pytest.mark.parametrize("flags", [["--num_fake", "0"], ["--num_fake", "1"], ["--num_real", "0"],
                                   ["--num_fake", "-5"], ["--num_real", "-1", "--metrics", "mvc"],
                                   ["--psi", "nan"], ["--mvc_yaw_step", "inf"], ["--num_mvc", "0"]])
def test_cli_rejects_bad_counts_and_non_finite_floats(run_dir, flags, capsys):
    """Before the fix, 0 or 1 images hung forever inside the covariance's matrix square root."""
    with pytest.raises(SystemExit) as caught:
        fe.main(["--path", str(run_dir), "--device", "cpu", *flags])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert flags[0] in err and "Traceback" not in err
    assert not (run_dir / "metrics.jsonl").exists()


def test_cli_missing_weights_exits_with_code_2(run_dir, offline_hub, capsys):
    assert fe.main(["--path", str(run_dir), "--metrics", "fid", "--device", "cpu", "--num_fake", "100"]) == 2
    err = capsys.readouterr().err
    assert inception.FID_WEIGHTS_FILENAME in err
    assert "--num_fake 100 is below 2048" in err  # small counts are allowed, with a warning
    assert not (run_dir / "metrics.jsonl").exists()


def test_cli_scores_a_checkpoint_written_at_the_end_of_training(tmp_path, tiny_generator, capsys):
    """Training ends at the empty final stage; the model was trained at the stage before it."""
    curriculum = curriculums.get_curriculum("Synthetic")
    final = curriculums.stage_boundaries(curriculum)[-1]
    state = tiny_generator.state_dict()
    save_checkpoint(tmp_path / "end" / "checkpoint.pth",
                    {"step": final, "curriculum": curriculum, "curriculum_name": "Synthetic",
                     "generator": state, "generator_ema": state})
    record, _ = score(["--path", str(tmp_path / "end"), "--metrics", "mvc", "--num_mvc", "2", "--device", "cpu",
                    "--num_workers", "0", "--no_append"], capsys)
    last_stage = curriculums.extract_metadata(curriculum, final - 1)
    assert record["step"] == final and record["output_size"] == last_stage["output_size"]


def test_cli_prints_a_readable_summary_named_like_the_readme_before_the_json_line(run_dir, capsys):
    """The README's demo command: the synthetic table's columns and rows, the mvc scores, then the JSON."""
    record, lines = score(["--path", str(run_dir), "--metrics", "synthetic,mvc", "--num_synthetic", "4",
                           "--num_mvc", "2", "--device", "cpu", "--no_append"], capsys)
    summary = "\n".join(lines[:-1])
    for name in ("silhouette IoU ↑", "depth error, true foreground ↓", "depth error, both foreground ↓",
                 "pixel KID ↓", "ceiling: real vs other real heads", "floor: untrained generator, no prior",
                 "trivial: one fixed blob where most heads are", "this generator", "mvc, NeRF image",
                 "mvc, final image", "step 7"):
        assert name in summary, name
    assert f"{record['synthetic_iou_ceiling']:.4g}" in summary
    assert not (run_dir / "metrics.jsonl").exists()  # --no_append


def test_the_model_flags_are_the_other_scripts(run_dir, capsys):
    """--path, --curriculum, --no_ema, --psi, --max_batch_size, --device and --threads as render_multiview_image.py
    and extract_shapes.py take them (issue 30); the defaults that decide the scores stay: no truncation, and the
    generator's own chunking of the SIREN's points."""
    import render_multiview_image

    model_flags = {"--path", "--curriculum", "--no_ema", "--psi", "--max_batch_size", "--device", "--threads"}
    for parser in (fe.build_parser(), render_multiview_image.build_parser()):
        assert model_flags <= {flag for action in parser._actions for flag in action.option_strings}
    defaults = fe.build_parser().parse_args(["--path", "x"])
    assert defaults.psi == 1.0 and defaults.max_batch_size is None and defaults.device is None
    # --curriculum is checked against the checkpoint, as by the other scripts: one line, exit 2.
    assert fe.main(["--path", str(run_dir), "--curriculum", "FFHQ", "--metrics", "mvc", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --curriculum FFHQ does not match the checkpoint"), err


def test_every_flag_has_help():
    for action in fe.build_parser()._actions:
        assert action.help, action.option_strings


@pytest.mark.parametrize("content", ["pickle", "truncated", "another network"])
def test_cli_corrupt_or_malicious_inception_weights_are_one_line(run_dir, tmp_path, capsys, content):
    """A pickle of Python objects (which could run code: never loaded), a truncated file, or another
    network's tensors: one `error:` line and exit code 2, never torch's advice to set weights_only=False."""
    import torch

    weights = tmp_path / "inception.pth"
    if content == "pickle":
        torch.save(torch.nn.Linear(2, 2), weights)
    elif content == "truncated":
        torch.save({"conv.weight": torch.ones(100)}, weights)
        weights.write_bytes(weights.read_bytes()[:150])
    else:
        torch.save({"conv.weight": torch.ones(3)}, weights)
    code = fe.main(["--path", str(run_dir / "checkpoint.pth"), "--metrics", "fid", "--num_real", "2", "--num_fake", "2",
                    "--inception_weights", str(weights), "--device", "cpu"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if not line.startswith("warning:")]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert "weights_only" not in err and "Traceback" not in err
    assert {"pickle": "pickled Python objects, which are never loaded", "truncated": "truncated or corrupt",
            "another network": "holds weights of another network"}[content] in lines[0]


def test_a_metrics_log_that_is_a_folder_is_refused_before_the_evaluation(run_dir, capsys, monkeypatch):
    """Issue 32: a folder named metrics.jsonl was found only after the whole evaluation."""
    (run_dir / "metrics.jsonl").mkdir()
    monkeypatch.setattr(fe, "evaluate", lambda *a, **k: pytest.fail("evaluated before checking metrics.jsonl"))
    assert fe.main(["--path", str(run_dir), "--metrics", "mvc", "--num_mvc", "2", "--device", "cpu",
                    "--num_workers", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {run_dir / 'metrics.jsonl'} is a folder, not a file: the scores are appended to it; "
                   f"fix it, or pass --no_append"]
