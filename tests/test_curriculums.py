"""Curricula: stage logic, docs/METHOD.md §8 values and validation."""
import math

import pytest

import curriculums
from curriculums import (extract_metadata, get_curriculum, is_final_stage, last_upsample_step,
                         next_stage_step, stage_boundaries, validate_curriculum)

STAGE_COLUMNS = ("batch_size", "num_steps", "img_size", "output_size", "batch_split",
                 "gen_lr", "disc_lr", "pos_lambda", "reproj_lambda")

# docs/METHOD.md §8 table, row by row.
METHOD_TABLE = [
    ("CelebAHQ", 0, (56, 16, 64, 64, 4, 6e-5, 2e-4, 15, 1)),
    ("CelebAHQ", 25000, (52, 16, 64, 128, 4, 5e-5, 2e-4, 15, 1)),
    ("CelebAHQ", 50000, (44, 16, 64, 256, 4, 3e-5, 1e-4, 0, 1)),
    ("CelebAHQ", 100000, (28, 16, 64, 512, 4, 2e-5, 8e-5, 0, 1)),
    ("FFHQ", 0, (56, 16, 64, 64, 4, 6e-5, 2e-4, 15, 1)),
    ("FFHQ", 25000, (52, 16, 64, 128, 4, 5e-5, 2e-4, 15, 1)),
    ("FFHQ", 50000, (40, 16, 64, 256, 4, 3e-5, 1e-4, 0, 1)),
    ("FFHQ", 100000, (28, 16, 64, 512, 4, 2e-5, 8e-5, 0, 1)),
    ("Cat", 0, (56, 12, 64, 64, 4, 6e-5, 2e-4, 15, 1)),
    ("Cat", 25000, (52, 12, 64, 128, 4, 5e-5, 1.8e-4, 15, 1)),
    ("Cat", 50000, (40, 12, 64, 256, 4, 3e-5, 1e-4, 0, 1)),
    ("Cat", 100000, (32, 12, 64, 512, 4, 2e-5, 8e-5, 0, 1)),
]


@pytest.mark.parametrize("name,step,values", METHOD_TABLE)
def test_spec_table(name, step, values):
    stage = get_curriculum(name)[step]
    assert tuple(stage[k] for k in STAGE_COLUMNS) == values


@pytest.mark.parametrize("name", ["CelebAHQ", "FFHQ", "Cat"])
def test_real_curricula_boundaries_and_end(name):
    c = get_curriculum(name)
    assert stage_boundaries(c) == [0, 25000, 50000, 100000, 200000]
    assert c[200000] == {}
    assert c["dataset"] == name
    assert isinstance(c["dataset_path"], str) and "/path/to/" in c["dataset_path"]


def test_face_and_cat_globals():
    for name, mixup in (("CelebAHQ", 0.1), ("FFHQ", 0.3)):
        c = get_curriculum(name)
        assert (c["fov"], c["ray_start"], c["ray_end"], c["fade_steps"]) == (12, 0.88, 1.12, 2000)
        assert (c["h_stddev"], c["v_stddev"], c["sample_dist"]) == (0.3, 0.155, "gaussian")
        assert c["h_mean"] == c["v_mean"] == math.pi / 2
        assert c["max_mixup_ratio"] == mixup
    cat = get_curriculum("Cat")
    assert (cat["ray_start"], cat["ray_end"], cat["fade_steps"]) == (0.8, 1.2, 10000)
    assert (cat["h_stddev"], cat["v_stddev"], cat["sample_dist"]) == (0.4, 0.2, "uniform")
    assert cat["max_mixup_ratio"] == 0.1
    for name in ("CelebAHQ", "FFHQ", "Cat"):
        c = get_curriculum(name)
        assert c["betas"] == (0.0, 0.9) and all(isinstance(b, float) for b in c["betas"])
        assert (c["topk_interval"], c["topk_v"], c["r1_lambda"], c["grad_clip"]) == (2000, 0.6, 0.2, 10)
        assert (c["latent_dim"], c["hidden_dim"], c["decoder_channels"]) == (256, 256, (256, 256, 128, 64))
        assert (c["model"], c["generator"], c["discriminator"]) == (
            "SPATIALSIRENBASELINE", "ImplicitGenerator3d", "CCSEncoderDiscriminator")
        assert c["hierarchical_sample"] is False and c["stereo_auxiliary"] is True
        assert (c["last_back"], c["eval_last_back"], c["unique_lr"]) == (False, True, False)
        assert (c["z_lambda"], c["weight_decay"], c["clamp_mode"], c["z_dist"]) == (0, 0, "relu", "gaussian")
        for cli_flag in ("sample_interval", "model_save_interval", "eval_freq"):
            assert cli_flag not in c


def test_synthetic_is_small_and_procedural():
    c = get_curriculum("Synthetic")
    assert c["dataset"] == "Synthetic" and c["dataset_path"] is None
    assert c["latent_dim"] == 256 and c["hidden_dim"] < 256
    assert c[stage_boundaries(c)[-1]] == {}
    assert extract_metadata(c, 0)["img_size"] <= 32


def test_one_critter_is_critters_with_one_object_ending_at_1600():
    """OneCritter must train as `--curriculum Critters --set synthetic_objects=1 --max_steps 1600` does (the
    Critters runs of docs/EXPERIMENTS.md): every stage and every global the same but those two."""
    one, family = get_curriculum("OneCritter"), get_curriculum("Critters")
    assert stage_boundaries(one) == [0, 1600] and one[1600] == {}
    assert one[0] == family[0]
    globals_of = lambda c: {k: v for k, v in c.items() if not isinstance(k, int)}
    assert globals_of(one) == {**globals_of(family), "synthetic_objects": 1}
    assert family["synthetic_objects"] == 0


@pytest.mark.parametrize("name", sorted(curriculums.CURRICULA))
def test_shipped_curricula_validate(name):
    validate_curriculum(get_curriculum(name), name)


def test_extract_metadata_stages():
    c = get_curriculum("CelebAHQ")
    assert extract_metadata(c, 0)["output_size"] == 64
    assert extract_metadata(c, 24999)["output_size"] == 64
    assert extract_metadata(c, 25000)["output_size"] == 128
    assert extract_metadata(c, 25000)["batch_size"] == 52
    assert extract_metadata(c, 99999)["output_size"] == 256
    assert extract_metadata(c, 199999)["output_size"] == 512
    meta = extract_metadata(c, 12345)
    assert meta["fov"] == 12 and meta["dataset"] == "CelebAHQ"
    assert not any(isinstance(k, int) for k in meta)
    end = extract_metadata(c, 200000)
    assert "batch_size" not in end and end["fov"] == 12


def test_global_values_override_stage_values():
    """As published (`extract_metadata` writes the globals last): a global wins in every stage."""
    c = {0: {"num_steps": 8, "batch_size": 2}, 10: {}, "num_steps": 4, "fov": 12}
    assert extract_metadata(c, 0)["num_steps"] == 4 and extract_metadata(c, 0)["batch_size"] == 2
    assert extract_metadata(c, 10)["num_steps"] == 4


def test_upsample_steps_and_final_stage():
    c = get_curriculum("FFHQ")
    assert last_upsample_step(c, 0) == 0
    assert last_upsample_step(c, 24999) == 0
    assert last_upsample_step(c, 25000) == 25000
    assert last_upsample_step(c, 60000) == 50000
    assert next_stage_step(c, 0) == 25000
    assert next_stage_step(c, 25000) == 50000
    assert next_stage_step(c, 150000) == 200000
    assert next_stage_step(c, 200000) == float("inf")
    assert not is_final_stage(c, 0)
    assert not is_final_stage(c, 199999)
    assert is_final_stage(c, 200000) and is_final_stage(c, 10 ** 7)


def test_get_curriculum_unknown_lists_available():
    with pytest.raises(ValueError) as info:
        get_curriculum("celeba_typo")
    for name in ("CelebAHQ", "FFHQ", "Cat", "Synthetic"):
        assert name in str(info.value)


def test_get_curriculum_returns_a_copy():
    c = get_curriculum("CelebAHQ")
    c[0]["batch_size"] = 1
    c["fov"] = 99
    assert curriculums.CelebAHQ[0]["batch_size"] == 56
    assert get_curriculum("CelebAHQ")["fov"] == 12


def test_validation_names_missing_keys():
    c = get_curriculum("CelebAHQ")
    del c["fov"], c["max_mixup_ratio"], c[25000]["gen_lr"]
    with pytest.raises(ValueError) as info:
        validate_curriculum(c, "Mine")
    msg = str(info.value)
    assert "'Mine'" in msg and "fov" in msg and "max_mixup_ratio" in msg
    assert "25000" in msg and "gen_lr" in msg


def test_validation_structure_errors():
    c = get_curriculum("Synthetic")
    del c[0]
    with pytest.raises(ValueError, match="step 0"):
        validate_curriculum(c)

    c = get_curriculum("Synthetic")
    c[stage_boundaries(c)[-1]] = {"batch_size": 8}
    with pytest.raises(ValueError, match="last stage must be empty"):
        validate_curriculum(c)

    c = get_curriculum("Synthetic")
    c[0]["output_size"] = 24
    with pytest.raises(ValueError, match="output_size"):
        validate_curriculum(c)

    c = get_curriculum("Synthetic")
    c[0]["output_size"] = c[0]["img_size"] * 32
    with pytest.raises(ValueError, match="output_size"):
        validate_curriculum(c)

    c = get_curriculum("Synthetic")
    c["betas"] = (0, 0.9)
    with pytest.raises(ValueError, match="betas"):
        validate_curriculum(c)


def test_last_trained_step_and_fade_alpha():
    from curriculums import fade_alpha, last_trained_step

    cur = get_curriculum("Synthetic")
    final = stage_boundaries(cur)[-1]
    assert last_trained_step(cur, final) == final - 1  # a checkpoint at the end was trained in the last stage
    assert last_trained_step(cur, 5) == 5
    second = stage_boundaries(cur)[1]
    fade = cur["fade_steps"]
    assert fade_alpha(cur, second) == 0.0
    assert fade_alpha(cur, second + fade // 2) == pytest.approx(0.5, abs=1 / fade)
    assert fade_alpha(cur, second + 10 * fade) == 1.0


def test_stage_rows_are_keyword_only():
    """img_size and output_size (both ints) cannot be swapped by position."""
    with pytest.raises(TypeError):
        curriculums._stage(56, 16, 64, 6e-5, 2e-4, 15)
    row = curriculums._stage(batch_size=1, num_steps=2, output_size=128, gen_lr=1e-4, disc_lr=2e-4, pos_lambda=0)
    assert (row["img_size"], row["output_size"]) == (64, 128)


def test_overrides_set_globals_and_stage_values():
    c = curriculums.apply_overrides(get_curriculum("FFHQ"), {"dataset_path": "/data/ffhq", "0.batch_size": 8})
    assert c["dataset_path"] == "/data/ffhq" and c[0]["batch_size"] == 8 and c[25000]["batch_size"] == 52
    assert curriculums.parse_override("0.gen_lr=2e-4") == ("0.gen_lr", 2e-4)
    assert curriculums.parse_override("betas=(0.0, 0.99)") == ("betas", (0.0, 0.99))
    assert curriculums.parse_override("dataset_path=/data/a b.png") == ("dataset_path", "/data/a b.png")


def test_evaluation_pose_keys_can_be_set():
    """The *_eval keys are read by the camera module (docs/METHOD.md §10): --set must accept them."""
    c = curriculums.apply_overrides(get_curriculum("FFHQ"), {"h_stddev_eval": 0.1, "sample_dist_eval": "normal"})
    assert extract_metadata(c, 0)["h_stddev_eval"] == 0.1
    validate_curriculum(c, "FFHQ")


def test_synthetic_sphere_prior_can_be_changed_or_switched_off_with_set():
    from generators.generators import build_generator
    prior = build_generator(curriculums.extract_metadata(get_curriculum("Synthetic"), 0))
    assert (prior.sphere_prior_radius, prior.sphere_prior_density) == (0.075, 300.0)
    for density, expected in ((0, 0.0), (150.5, 150.5)):
        c = curriculums.apply_overrides(get_curriculum("Synthetic"), {"sphere_prior_density": density})
        assert build_generator(curriculums.extract_metadata(c, 0)).sphere_prior_density == expected
    with pytest.raises(ValueError):
        curriculums.apply_overrides(get_curriculum("Synthetic"), {"sphere_prior_radius": "big"})
    # on a published curriculum the keys are optional: --set adds the prior there too
    c = curriculums.apply_overrides(get_curriculum("FFHQ"), {"sphere_prior_radius": 0.1, "sphere_prior_density": 50.0})
    assert build_generator(curriculums.extract_metadata(c, 0)).sphere_prior_radius == 0.1


# ------------------------------------------------------------------ the table of keys (curriculums.KEYS)
@pytest.mark.parametrize("name", sorted(curriculums.CURRICULA))
def test_every_key_of_the_shipped_curricula_is_in_the_table(name):
    c = get_curriculum(name)
    globals_ = [k for k in c if isinstance(k, str)]
    assert set(globals_) <= set(curriculums.KEYS), set(globals_) - set(curriculums.KEYS)
    for stage in stage_boundaries(c):
        for key in c[stage]:
            assert curriculums.KEYS[key].scope == curriculums.STAGE, key


def test_extract_metadata_fills_in_the_defaults_and_a_curriculum_value_wins():
    ffhq = extract_metadata(get_curriculum("FFHQ"), 0)
    defaulted = {name: key.default for name, key in curriculums.KEYS.items()
                 if key.default is not curriculums.REQUIRED}
    assert {"nerf_noise_steps", "white_back", "synthetic_size", "h_stddev_eval"} <= set(defaulted)
    for name, default in defaulted.items():
        assert ffhq[name] == get_curriculum("FFHQ").get(name, default), name
    assert ffhq["nerf_noise_steps"] == 5000 and ffhq["h_stddev_eval"] is None and ffhq["white_back"] is False
    assert extract_metadata(get_curriculum("Synthetic"), 0)["nerf_noise_steps"] == 300
    # the required keys have no default: a curriculum without one is invalid, not silently filled in
    assert "fov" not in extract_metadata({0: {}, 1: {}}, 0) and "batch_size" not in extract_metadata({}, 0)


def test_the_choices_default_to_the_published_behaviour_which_a_curriculum_may_leave_out():
    choosing = {name: key for name, key in curriculums.KEYS.items() if key.choices}
    assert set(choosing) == {"photometric_input", "warp_projection", "real_resize", "image_source"}
    for name, key in choosing.items():
        assert key.default == key.choices[0] == extract_metadata(get_curriculum("FFHQ"), 0)[name]
    c = {k: v for k, v in get_curriculum("CelebAHQ").items() if k not in choosing}
    validate_curriculum(c, "CelebAHQ")
    assert {name: extract_metadata(c, 0)[name] for name in choosing} == {"photometric_input": "shifted",
                                                                          "warp_projection": "ray_norm",
                                                                          "real_resize": "nearest",
                                                                          "image_source": "decoder"}


def test_set_checks_keys_left_to_their_default_against_the_default():
    """An optional key a curriculum leaves out still has a type: its default's."""
    with pytest.raises(ValueError, match="expected int"):
        curriculums.apply_overrides(get_curriculum("FFHQ"), {"nerf_noise_steps": "fast"})
    assert curriculums.apply_overrides(get_curriculum("FFHQ"), {"nerf_noise_steps": 800})["nerf_noise_steps"] == 800


def test_set_accepts_a_float_where_the_key_is_any_number():
    """Issue 32: --set fov=12.5 was refused because the curriculum's default is the integer 12."""
    c = curriculums.apply_overrides(get_curriculum("FFHQ"), {"fov": curriculums.parse_override("fov=12.5")[1]})
    assert c["fov"] == 12.5
    validate_curriculum(c, "FFHQ")
    with pytest.raises(ValueError, match="expected int"):  # an integer key still takes integers only
        curriculums.apply_overrides(get_curriculum("FFHQ"), {"0.batch_size": 8.5})
