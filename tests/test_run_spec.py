"""The run specification (run_spec.py): options with one set of defaults, every option decided by
resolve_run, checkpoints of older runs resumed with what they were trained with (main.py reading and
hashing a resumed checkpoint once, and processes trusting the RunSpec: test_main.py)."""
from __future__ import annotations

import pytest

import curriculums
import main
from run_spec import TrainConfig, build_networks, check_run, resolve_run, run_curriculum
from test_siren import edit_the_formula


def test_the_flags_take_their_defaults_from_train_config():
    """One set of defaults: the command line without flags is TrainConfig's defaults."""
    assert main.config_from_args(main.parse_args(["--curriculum", "Synthetic"])) == TrainConfig(curriculum="Synthetic")


def test_resolution_decides_every_option(tmp_path):
    spec, state = resolve_run(TrainConfig(curriculum="Synthetic", output_dir=str(tmp_path / "a")))
    assert state is None and spec.resume_path is None and spec.config.eval_freq == 0  # off for Synthetic
    spec, _ = resolve_run(TrainConfig(curriculum="FFHQ", output_dir=str(tmp_path / "b"),
                                      curriculum_overrides={"0.batch_size": 8}))
    assert spec.config.eval_freq == 5000 and spec.curriculum[0]["batch_size"] == 8
    # --resume auto: nothing to continue yet (test_main.py: a run directory's own checkpoint)
    spec, _ = resolve_run(TrainConfig(curriculum="Synthetic", output_dir=str(tmp_path / "c"), resume="auto"))
    assert spec.resume_path is None


def test_a_run_does_not_start_when_the_field_formula_and_its_fast_path_differ(tmp_path, monkeypatch):
    """Neither main.py's checks before any process starts nor the networks a training process builds."""
    spec, state = resolve_run(TrainConfig(curriculum="Synthetic", output_dir=str(tmp_path / "run")))
    check_run(spec, state, world_size=1)
    edit_the_formula(monkeypatch, "layer")
    with pytest.raises(ValueError, match=r"siren/siren\.py"):
        check_run(spec, state, world_size=1)
    with pytest.raises(ValueError, match=r"siren/siren\.py"):
        build_networks(curriculums.extract_metadata(spec.curriculum, 0))


def test_checkpoints_written_before_the_published_defaults_keep_their_corrections(tmp_path):
    """A run of ours trained when the corrections were the only behaviour resumes with them; an imported
    official checkpoint and a current one resume with the curriculum's (published) values."""
    config = TrainConfig(curriculum="CelebAHQ", output_dir=str(tmp_path / "run"),
                         curriculum_overrides={"0.batch_size": 8})
    old_curriculum = {k: v for k, v in curriculums.get_curriculum("CelebAHQ").items()
                      if k not in curriculums.LEGACY_CORRECTIONS}
    old = {"curriculum_name": "CelebAHQ", "curriculum": old_curriculum, "curriculum_overrides": {}}
    curriculum, overrides = run_curriculum(config, old)
    assert {k: curriculum[k] for k in curriculums.LEGACY_CORRECTIONS} == curriculums.LEGACY_CORRECTIONS
    assert overrides["0.batch_size"] == 8 and overrides["photometric_input"] == "unit"
    for state in ({**old, "imported_from": {"generator": "generator.pth"}},
                  {**old, "curriculum": curriculums.get_curriculum("CelebAHQ")}):
        curriculum, _ = run_curriculum(config, state)
        assert (curriculum["photometric_input"], curriculum["warp_projection"], curriculum["real_resize"]) == \
            ("shifted", "ray_norm", "nearest")
