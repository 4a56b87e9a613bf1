"""The Python API (generators/pretrained.py): the README's example runs as written, and `render` is what the
scripts render. CPU only, on the tiny checkpoint of conftest.py."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import render_multiview_image
from generators.pretrained import (MULTIVIEW_YAW_OFFSETS, cameras_around_mean, latent_for_seed, load_model, render,
                                   render_options, render_views)
from utils.images import make_row, to_uint8

README = Path(__file__).resolve().parent.parent / "README.md"
SECTION = "## Using the generator from Python"
README_CHECKPOINT = '"runs/demo"'  # the demo's run directory, which the example loads


def readme_example() -> str:
    """The first python code block of the README's section on the Python API."""
    text = README.read_text()
    assert SECTION in text, f"README.md has no section {SECTION!r}"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, f"no ```python block in README.md's {SECTION!r}"
    return blocks[0]


def test_the_readme_example_runs(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    code = readme_example()
    assert README_CHECKPOINT in code
    monkeypatch.chdir(tmp_path)  # the example writes row.png into the current folder
    namespace = {}
    exec(compile(code.replace(README_CHECKPOINT, repr(str(tiny_checkpoint.parent))), "README.md", "exec"),
         namespace)
    views, model = namespace["views"], namespace["model"]
    size, nerf_size = model.stage.output_size, model.stage.img_size
    assert views.image.shape == (3, 3, size, size) and views.depth.shape == (3, nerf_size, nerf_size)
    assert capsys.readouterr().out.splitlines() == [str(views.image.shape), str(views.depth.shape)]
    with Image.open(tmp_path / "row.png") as row:
        assert row.size == (3 * size, size)


def test_render_is_what_the_script_writes(tiny_checkpoint, tmp_path):
    """render_multiview_image.py's image_{seed}.png is the row `render` gives with the script's defaults."""
    assert render_multiview_image.main(["--path", str(tiny_checkpoint), "--output_dir", str(tmp_path), "--seeds", "3",
                                        "--device", "cpu"]) == 0
    model = load_model(tiny_checkpoint, device="cpu")
    expected = make_row(to_uint8(render(model, 3).image))
    with Image.open(tmp_path / "image_3.png") as written:
        np.testing.assert_array_equal(np.asarray(written.convert("RGB")), expected)


def test_render_is_render_views_at_the_cameras_around_the_mean_pose(tiny_checkpoint):
    model = load_model(tiny_checkpoint, device="cpu")
    options = render_options(model, 8, 8, num_steps=4)
    yaws, pitches = [0.4, -0.2], [0.1, 0.0]
    out = render(model, 5, yaws, pitches, options=options, psi=0.7)
    cameras = cameras_around_mean(options, yaws, pitches)
    reference = render_views(model, latent_for_seed(model, 5), cameras, options, 0.7, 10_000)
    torch.testing.assert_close(out.cam2world, cameras)
    torch.testing.assert_close(out.image, reference.image)
    torch.testing.assert_close(out.depth, reference.depth)
    assert len(render(model, 5, options=options).image) == len(MULTIVIEW_YAW_OFFSETS)
