"""Tests for the browser viewer: its frames (visualize/frames.py), invert.py's codes file as its object,
the CLI (viewer.py), and the page itself in headless Chromium.

The browser test runs where Debian's `chromium` and `chromium-driver`, selenium and viser are
installed (CI installs them: .ci/run); elsewhere it is skipped, saying which is missing.
"""
from __future__ import annotations

import importlib.util
import io
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import viewer
from test_extract_shapes import read_ply
from generators.pretrained import latent_for_seed, load_fitted_codes, load_model, render_options
from inversion.codes_file import save_codes
from visualize.frames import (BAR_COLOUR, MODES, FrameRenderer, ViewSettings, camera_position, frame_square,
                              letterbox, moving_options, pose_from_camera, zoomed_fov)

ROOT = Path(__file__).resolve().parents[1]
FRONT = math.pi / 2


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return load_model(tiny_checkpoint, device="cpu")


@pytest.fixture(scope="module")
def renderer(model):
    return FrameRenderer(model, render_options(model), moving_size=8, max_batch_size=100_000)


# ------------------------------------------------------------------- cameras
def test_orbit_camera_round_trip():
    for yaw, pitch in [(FRONT, FRONT), (FRONT + 0.4, FRONT - 0.3), (-2.0, 0.2), (3.0, 2.9)]:
        position = camera_position(yaw, pitch, 2.5)
        got_yaw, got_pitch, distance = pose_from_camera(position + np.array([0.1, -0.2, 0.3]), (0.1, -0.2, 0.3))
        assert (got_yaw, got_pitch, distance) == pytest.approx((yaw, pitch, 2.5), abs=1e-9)
    np.testing.assert_allclose(camera_position(FRONT, FRONT), [0, 0, 1], atol=1e-12)  # the front: +z
    _, pitch, _ = pose_from_camera((0.0, 3.0, 0.0))  # straight above: pitch kept off the pole
    assert 0 < pitch < 1e-4


def test_zoom_narrows_the_field_of_view():
    assert zoomed_fov(12.0, 1.0) == pytest.approx(12.0)
    assert zoomed_fov(12.0, 0.5) < 12.0 < zoomed_fov(12.0, 2.0)
    # the object's size in the picture goes with 1 / tan(fov / 2), like a camera at that distance
    assert math.tan(math.radians(zoomed_fov(12.0, 3.0)) / 2) == pytest.approx(3 * math.tan(math.radians(6)))


def test_letterbox_puts_the_square_frame_in_the_middle():
    frame = np.arange(2 * 2 * 3, dtype=np.uint8).reshape(2, 2, 3) * 10
    wide = letterbox(frame, 10, 6)
    assert wide.shape == (6, 10, 3)
    assert (wide[:, :2] == BAR_COLOUR).all() and (wide[:, 8:] == BAR_COLOUR).all()
    np.testing.assert_array_equal(wide[0:3, 2:5], np.broadcast_to(frame[0, 0], (3, 3, 3)))
    np.testing.assert_array_equal(wide[3:6, 5:8], np.broadcast_to(frame[1, 1], (3, 3, 3)))
    assert frame_square(10, 6) == (2, 0, 6)
    tall = letterbox(frame, 4, 8)
    assert tall.shape == (8, 4, 3) and (tall[:2] == BAR_COLOUR).all() and frame_square(4, 8) == (0, 2, 4)
    big = letterbox(frame, 4000, 2000, max_side=1000)  # sent smaller, same shape; the square scales with it
    assert big.shape == (500, 1000, 3) and frame_square(4000, 2000, max_side=1000) == (1000, 0, 2000)


# -------------------------------------------------------------------- frames
def cam(yaw, pitch=FRONT):
    from generators.cameras import cam2world_from_poses

    return cam2world_from_poses(torch.tensor([float(yaw)]), torch.tensor([float(pitch)]))


def test_frames_are_the_rendering_scripts_renders(model, renderer):
    """Image: staged_forward at the same camera, psi and fade-in; NeRF RGB and depth: the same
    view's maps; a style seed: style_mix_forward; while moving: a smaller NeRF, same decoder blocks."""
    from utils.images import depth_to_uint8, to_uint8

    settings = ViewSettings(seed=3, psi=0.7, yaw=FRONT + 0.25, pitch=FRONT - 0.1)
    options = render_options(model)
    z = latent_for_seed(model, 3)
    direct = model.generator.staged_forward(z, options, psi=0.7, cam2world=cam(FRONT + 0.25, FRONT - 0.1),
                                            alpha=renderer.alpha)
    frame = renderer.render(settings)
    assert not frame.moving and frame.nerf_size == options.rays.img_size and frame.seconds > 0
    np.testing.assert_array_equal(frame.image, to_uint8(direct.image[0]))
    np.testing.assert_array_equal(renderer.render(replace(settings, mode="NeRF RGB")).image,
                                  to_uint8(direct.nerf_rgb[0], (0, 1)))
    depth = renderer.render(replace(settings, mode="depth")).image
    np.testing.assert_array_equal(depth, depth_to_uint8(direct.depth[0], 0.88, 1.12))
    geometry = renderer.render(replace(settings, mode="geometry")).image
    assert geometry.shape == depth.shape and (geometry == 255).any() and (geometry < 255).any()
    mixed = model.generator.style_mix_forward(z, latent_for_seed(model, 8), options, psi=0.7,
                                              cam2world=cam(FRONT + 0.25, FRONT - 0.1), alpha=renderer.alpha)
    np.testing.assert_array_equal(renderer.render(replace(settings, style_seed=8)).image,
                                  to_uint8(mixed.image[0]))
    moving = renderer.render(settings, moving=True)
    assert moving.moving and moving.nerf_size == 8 and moving.image.shape == (8, 8, 3)
    assert moving_options(options, 8).output_size == 8 * options.output_size // options.rays.img_size
    with pytest.raises(ValueError, match="mode must be one of"):
        renderer.render(ViewSettings(mode="normals"))
    assert MODES == ("image", "NeRF RGB", "depth", "geometry")


def test_the_field_of_view_and_the_camera_change_the_frame(renderer):
    base = renderer.render(ViewSettings()).image
    assert not np.array_equal(base, renderer.render(ViewSettings(fov=20.0)).image)
    assert not np.array_equal(base, renderer.render(ViewSettings(yaw=FRONT + 0.3)).image)
    np.testing.assert_array_equal(base, renderer.render(ViewSettings()).image)  # deterministic


# ---------------------------------------------------------------- codes file
def save_fitted(path, model, codes, yaw, pitch):
    """A codes file as invert.py writes it (inversion/codes_file.py), fitted to `model`'s weights."""
    return save_codes(path, codes, yaw, pitch, base_generator=model.generator)


def test_codes_file_round_trip_opens_as_its_object(tmp_path, model, renderer):
    codes = model.generator.truncated_mapping(latent_for_seed(model, 5), 0.6)
    path = save_fitted(tmp_path / "codes.pth", model, codes, yaw=FRONT + 0.2, pitch=FRONT - 0.05)
    loaded = load_fitted_codes(model, path)
    assert loaded.yaw == pytest.approx(FRONT + 0.2) and loaded.pitch == pytest.approx(FRONT - 0.05)
    for a, b in zip(loaded.codes, codes):
        torch.testing.assert_close(a, b)
    with_file = FrameRenderer(renderer.model, renderer.full, 8, 100_000, codes_file=loaded)
    settings = ViewSettings(seed=5, psi=0.6, yaw=FRONT + 0.2)
    np.testing.assert_array_equal(with_file.render(replace(settings, use_codes_file=True)).image,
                                  renderer.render(settings).image)


def test_a_codes_file_on_the_command_line_opens_at_its_camera(tmp_path, tiny_checkpoint, model):
    codes = model.generator.truncated_mapping(latent_for_seed(model, 2), 1.0)
    path = save_fitted(tmp_path / "photo.pth", model, codes, yaw=FRONT - 0.3, pitch=FRONT + 0.1)
    args = viewer.build_parser().parse_args(["--path", str(tiny_checkpoint), "--codes", str(path), "--device", "cpu"])
    renderer = viewer.prepare(args)
    assert renderer.moving.rays.img_size == 8 and renderer.full.rays.img_size == 16
    np.testing.assert_allclose(viewer.start_position(renderer), camera_position(FRONT - 0.3, FRONT + 0.1))
    np.testing.assert_allclose(viewer.start_position(renderer, codes_camera=False), camera_position(FRONT, FRONT))
    frame = renderer.render(ViewSettings(use_codes_file=True, yaw=FRONT - 0.3, pitch=FRONT + 0.1, seed=7))
    seed_two = renderer.render(ViewSettings(seed=2, psi=1.0, yaw=FRONT - 0.3, pitch=FRONT + 0.1))
    np.testing.assert_array_equal(frame.image, seed_two.image)  # the file's codes, not seed 7's


# ----------------------------------------------------------------------- CLI
def test_every_flag_has_help():
    for action in viewer.build_parser()._actions:
        assert action.help, action.option_strings


def test_missing_viser_names_the_package(tiny_checkpoint, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "viser", None)  # import viser -> ImportError
    assert viewer.main(["--path", str(tiny_checkpoint)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: the viewer needs the viser package") and "pip install -r requirements-viewer.txt" in err
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize("flags, message", [
    (["--port", "70000"], "--port must be in 0..65535"),
    (["--seed", "-1"], "--seed must be in 0..9999"),
    (["--mesh_resolution", "8"], "--mesh_resolution must be in 32..256"),
    (["--moving_image_size", "1"], "--moving_image_size must be at least 2"),
    (["--settle", "-1"], "--settle must be >= 0"),
])
def test_bad_flags_are_usage_errors(tiny_checkpoint, capsys, flags, message):
    assert viewer.main(["--path", str(tiny_checkpoint), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and len(err.strip().splitlines()) == 1


@pytest.mark.skipif(importlib.util.find_spec("viser") is None, reason="viser is not installed")
def test_bad_inputs_after_viser_are_usage_errors(tmp_path, tiny_checkpoint, capsys):
    (tmp_path / "codes.pt").write_text("junk")
    assert viewer.main(["--path", str(tiny_checkpoint), "--codes", str(tmp_path / "codes.pt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --codes ") and "not a codes file" in err and err.count("\n") == 1
    assert viewer.main(["--path", str(tmp_path / "none.pth")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


@pytest.mark.parametrize("host", ["999.1.1.1", "192.0.2.1", "no-such-host.invalid"])
def test_a_host_this_machine_cannot_listen_on_fails_at_once(tmp_path, tiny_checkpoint, host):
    """Issue 32: viser takes every OSError for a busy port and tries the next port forever, so --host
    999.1.1.1 (or an address of another machine, 192.0.2.1 is TEST-NET-1) hung without a word."""
    started = time.monotonic()
    done = subprocess.run([sys.executable, str(ROOT / "viewer.py"), "--path", str(tiny_checkpoint), "--host", host,
                           "--threads", "1", "--output_dir", str(tmp_path / "saved")], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"error: --host {host}") and done.stderr.count("\n") == 1, done.stderr
    assert time.monotonic() - started < 60 and not (tmp_path / "saved").exists()


def test_an_output_dir_that_is_a_file_is_named(tmp_path, tiny_checkpoint, capsys):
    (tmp_path / "file").write_text("x")
    for output_dir in (tmp_path / "file", tmp_path / "file" / "sub", Path("/proc/viewer")):
        assert viewer.main(["--path", str(tiny_checkpoint), "--output_dir", str(output_dir)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: --output_dir {output_dir}") and err.count("\n") == 1, err


class FakeClient:
    """What the save buttons use of a browser tab: notifications and downloads, recorded."""

    def __init__(self):
        self.notes, self.downloads = [], []

    def add_notification(self, title, body, **kwargs):
        self.notes.append((title, body, kwargs.get("color")))
        return SimpleNamespace(remove=lambda: None)

    def send_file_download(self, name, data):
        self.downloads.append(name)


def saving_session(renderer, output_dir, *flags, settings=ViewSettings()):
    """A Session of a ViewerApp (viser mocked) whose controls say `settings`; its renders are counted."""
    from unittest.mock import MagicMock

    args = viewer.build_parser().parse_args(["--path", "x.pth", "--output_dir", str(output_dir), *flags])
    app = viewer.ViewerApp(args, renderer, MagicMock())
    app.renders = 0
    real_render = app.render

    def render(*a, **k):
        app.renders += 1
        return real_render(*a, **k)

    app.render = render
    session = object.__new__(viewer.Session)
    session.app, session.client = app, FakeClient()
    session.settings = lambda: settings
    session.mesh_resolution, session.mesh_colours = SimpleNamespace(value=32), SimpleNamespace(value="none")
    return session


def test_the_save_buttons_keep_an_earlier_session_s_files_unless_overwrite(tmp_path, renderer, capsys):
    """Issue 32: a save replaced a file of the same name in --output_dir (an earlier session's view of the
    same object at the same camera) without a word. Now the page says "not saved", naming the file and
    --overwrite, before anything is rendered; the viewer's own files may be saved again."""
    out = tmp_path / "saved"
    session = saving_session(renderer, out)
    view = session.save_view()
    assert view.parent == out and session.app.renders == 1
    assert session.save_view() == view and session.app.renders == 2  # its own file, saved again
    other = saving_session(renderer, out)  # the next session, into the same folder
    mesh = out / f"mesh_{other.object_name(ViewSettings())}.ply"
    mesh.write_text("an earlier session's mesh")
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    capsys.readouterr()
    other.app.renderer = None  # neither a frame nor a mesh may be made
    other._guarded(other.save_view)
    other._guarded(other.save_mesh)
    assert other.app.renders == 0 and {path.name: path.read_bytes() for path in out.iterdir()} == before
    assert [(title, colour) for title, _, colour in other.client.notes] == [("not saved", "red")] * 2
    assert other.client.notes[0][1].startswith(f"--output_dir {out} already holds {view.name}, which this run would "
                                               f"replace; pass --overwrite")
    assert f"already holds {mesh.name}" in other.client.notes[1][1]
    err = capsys.readouterr().err
    assert err.count("\n") == 2 and err.startswith("error: --output_dir") and "Traceback" not in err
    written = view.stat().st_mtime_ns
    replacing = saving_session(renderer, out, "--overwrite")
    assert replacing.save_view() == view and replacing.client.notes[0][0] == "saved view"
    assert view.stat().st_mtime_ns != written and view.read_bytes() == before[view.name]  # the same frame, anew


# ------------------------------------------------------------------- browser
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
MISSING = [name for name, found in [("Debian's chromium (apt-get install chromium)", CHROMIUM),
                                    ("chromedriver (apt-get install chromium-driver)", CHROMEDRIVER),
                                    ("selenium (pip install selenium)", importlib.util.find_spec("selenium")),
                                    ("viser (pip install -r requirements-viewer.txt)", importlib.util.find_spec("viser"))]
           if not found]
STATUS = re.compile(r"frame (\d+) · (full|moving) · (\d+) px NeRF → (\d+) px · render ([\d.]+) s · frame ([\d.]+) s"
                    r"\s+yaw ([-\d.]+) pitch ([-\d.]+) fov ([\d.]+) · ([^·]+) · (.*)")
WINDOW = (1000, 700)
# Largest difference (0-255) between a screenshot's frame pixel and the direct render, for the
# lossless (PNG) full frames. Measured with Chromium 156's software WebGL: 0 at the front camera
# and after the seed change, 1 after the drag (the status gives the yaw to 6 decimals, and the
# direct render uses that rounded yaw); the texture is sampled in the middle of each frame
# pixel's block, so no filtering enters. Even a JPEG of the same frame (quality 80, as sent while
# moving) is off by at most 1 there (measured: each frame pixel is a flat 35 px block at this
# window size, so JPEG's 8 x 8 blocks inside it are exact); a frame of the previous camera or
# seed differs by 25-35 on average and by up to ~150 (asserted: mean > 5), a blank canvas by more.
PNG_TOLERANCE = 2


class Page:
    """The viewer's page in headless Chromium."""

    def __init__(self, url):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--force-device-scale-factor=1",
                     f"--window-size={WINDOW[0]},{WINDOW[1]}", "--enable-unsafe-swiftshader", "--use-angle=swiftshader"):
            options.add_argument(flag)
        self.driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        self.driver.get(url)

    def status(self):
        match = STATUS.search(self.driver.execute_script("return document.body.innerText"))
        if not match:
            return None
        g = match.groups()
        return {"frame": int(g[0]), "kind": g[1], "nerf": int(g[2]), "size": int(g[3]), "render_s": float(g[4]),
                "frame_s": float(g[5]), "yaw": float(g[6]), "pitch": float(g[7]), "fov": float(g[8]),
                "mode": g[9].strip(), "object": g[10].strip()}

    def wait_for(self, condition, timeout=60.0, what="a frame"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.status()
            if status is not None and condition(status):
                return status
            time.sleep(0.1)
        raise AssertionError(f"no {what} within {timeout:.0f} s; last status {self.status()}")

    def close_notifications(self):
        """Close the page's notifications (Chromium's software WebGL warning covers part of the frame)."""
        self.driver.execute_script("""
            for (const button of document.querySelectorAll('.mantine-Notification-closeButton')) button.click();""")

    def canvas(self):
        return self.driver.execute_script(
            "const r = document.querySelector('canvas').getBoundingClientRect(); return [r.x, r.y, r.width, r.height];")

    def screenshot(self):
        from PIL import Image

        return np.asarray(Image.open(io.BytesIO(self.driver.get_screenshot_as_png())).convert("RGB"))

    def frame_pixels(self, size, shot=None):
        """The frame's size x size pixels read from a screenshot: the middle of each pixel's block
        inside the letterboxed square of the canvas."""
        shot = self.screenshot() if shot is None else shot
        x, y, width, height = self.canvas()
        left, top, side = frame_square(round(width), round(height))
        centres = (np.arange(size) + 0.5) * side / size
        rows = np.floor(y + top + centres).astype(int)
        cols = np.floor(x + left + centres).astype(int)
        return shot[rows][:, cols]

    def stable_frame(self, size, timeout=10.0):
        """The frame once two screenshots 0.3 s apart agree (the texture has been uploaded)."""
        deadline, last = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            pixels = self.frame_pixels(size)
            if last is not None and np.array_equal(pixels, last):
                return pixels
            last = pixels
            time.sleep(0.3)
        raise AssertionError("the frame in the page did not settle")

    def full_frame(self, condition, size, what):
        """(status, pixels) of a full frame that satisfies `condition` and that is still the last one after
        its picture settled (the camera-controls' damping can send a few more cameras after a drag)."""
        for _ in range(20):
            status = self.wait_for(lambda s: s["kind"] == "full" and condition(s), what=what)
            self.close_notifications()
            pixels = self.stable_frame(size)
            if self.status() == status:
                return status, pixels
        raise AssertionError(f"the frames did not come to rest ({what})")

    def click_button(self, text):
        from selenium.webdriver.common.by import By

        self.driver.find_element(By.XPATH, f"//button[normalize-space()='{text}']").click()

    def quit(self):
        self.driver.quit()


@pytest.fixture
def running_viewer(tmp_path, tiny_checkpoint):
    """`python viewer.py` on a free port with the tiny checkpoint; yields (url, output_dir, log lines)."""
    output_dir = tmp_path / "saved"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, str(ROOT / "viewer.py"), "--path", str(tiny_checkpoint), "--port", "0",
                                "--threads", "1", "--output_dir", str(output_dir), "--mesh_resolution", "32",
                                "--device", "cpu"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            match = re.search(r"open (http://localhost:\d+) \(from another machine: ssh -L", line)
            if match:
                yield match.group(1), output_dir, lines
                break
        else:
            pytest.fail("the viewer did not start: " + "".join(lines))
        if not match:
            pytest.fail("the viewer exited: " + "".join(lines))
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def direct_render(model, seed=0, yaw=FRONT, pitch=FRONT, fov=12.0, psi=0.5):
    """The rendering scripts' image of a seed from a camera (staged_forward), independent of the viewer's code."""
    from dataclasses import replace as replace_field

    from utils.images import to_uint8
    from generators.pretrained import decoder_alpha

    options = render_options(model)
    options = options.replace(rays=replace_field(options.rays, fov=fov))
    out = model.generator.staged_forward(latent_for_seed(model, seed), options, psi=psi, cam2world=cam(yaw, pitch),
                                         alpha=decoder_alpha(model, options))
    return to_uint8(out.image[0])


def mean_difference(a, b):
    return float(np.abs(a.astype(int) - b.astype(int)).mean())


@pytest.mark.slow
@pytest.mark.skipif(bool(MISSING), reason="the browser test needs " + ", ".join(MISSING))
def test_the_page_shows_the_camera_s_render_and_follows_the_mouse_and_the_seed(running_viewer, model):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    url, output_dir, _ = running_viewer
    options = render_options(model)
    size, moving_size = options.output_size, options.rays.img_size // 2  # the viewer's default while moving
    page = Page(url)
    try:
        # 1. the first full frame is the direct render of the front camera (not a blank page, not noise)
        first, shown = page.full_frame(lambda s: abs(s["yaw"] - FRONT) + abs(s["pitch"] - FRONT) < 1e-5, size,
                                       what="full frame from the front camera")
        assert first["fov"] == pytest.approx(12.0) and first["mode"] == "image" and first["object"] == "seed 0 psi 0.5"
        assert first["nerf"] == options.rays.img_size and first["size"] == size and first["render_s"] > 0
        front = direct_render(model)
        assert np.abs(shown.astype(int) - front.astype(int)).max() <= PNG_TOLERANCE
        assert front.std() > 10  # a frame with content: a uniform page could not match it

        # 2. drag the mouse across the canvas: the camera turns, frames go small while it moves,
        # and the still frame is the render of the new camera, not of the old one
        x, y, width, height = page.canvas()
        chain = ActionChains(page.driver, duration=50)
        chain.move_to_element_with_offset(page.driver.find_element(By.TAG_NAME, "canvas"), 0, 0).click_and_hold()
        chain.perform()
        kinds = set()
        for _ in range(12):
            ActionChains(page.driver, duration=50).move_by_offset(-12, 0).perform()
            status = page.status()
            kinds.add((status["kind"], status["nerf"]) if status else None)
        ActionChains(page.driver).release().perform()
        moved, shown = page.full_frame(lambda s: abs(s["yaw"] - FRONT) > 0.05, size, what="turned frame")
        assert abs(moved["pitch"] - FRONT) < 0.05  # a horizontal drag turns the yaw
        assert ("moving", moving_size) in kinds, kinds
        turned = direct_render(model, yaw=moved["yaw"], pitch=moved["pitch"], fov=moved["fov"])
        assert np.abs(shown.astype(int) - turned.astype(int)).max() <= PNG_TOLERANCE
        assert mean_difference(shown, front) > 5  # the old camera's frame would fail above

        # 3. the seed slider, with the keyboard: seed 1 from the same camera
        thumb = page.driver.find_elements(By.CSS_SELECTOR, "[role=slider]")[0]
        assert thumb.get_attribute("aria-valuenow") == "0"
        for _ in range(10):  # a key press can land before the thumb has the focus: press until it moved
            page.driver.execute_script("arguments[0].focus();", thumb)
            thumb.send_keys(Keys.ARROW_RIGHT)
            time.sleep(0.3)
            if thumb.get_attribute("aria-valuenow") != "0":
                break
        assert thumb.get_attribute("aria-valuenow") == "1"
        reseeded, shown = page.full_frame(lambda s: s["object"].startswith("seed 1 "), size, what="seed 1 frame")
        other = direct_render(model, seed=1, yaw=reseeded["yaw"], pitch=reseeded["pitch"], fov=reseeded["fov"])
        assert np.abs(shown.astype(int) - other.astype(int)).max() <= PNG_TOLERANCE
        assert mean_difference(shown, turned) > 5

        # 4. the save buttons write the full frame and a coloured mesh of this object
        page.click_button("save view (PNG)")
        page.click_button("save mesh (PLY)")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (list(output_dir.glob("view_*.png")) and
                                                   list(output_dir.glob("mesh_*.ply"))):
            time.sleep(0.2)
        (view,), (mesh,) = list(output_dir.glob("view_*.png")), list(output_dir.glob("mesh_*.ply"))
        from PIL import Image
        # The saved frame is rendered at the viewer's exact yaw, `other` at the status's 6-decimal yaw (and in
        # another process, which may split the work over other threads): float32 rounding apart, which can move
        # a value across a uint8 boundary (measured: 1 level on 1 of 768 values, in CI on issue 28's branch),
        # so the screenshot's bound holds here too.
        saved = np.asarray(Image.open(view).convert("RGB"))
        assert np.abs(saved.astype(int) - other.astype(int)).max() <= PNG_TOLERANCE
        assert view.name.startswith("view_seed1_psi0.5_image_yaw")
        vertices, faces, colours = read_ply(mesh, colours=True)
        assert mesh.name == "mesh_seed1_psi0.5.ply" and len(faces) > 100 and colours.shape == (len(vertices), 3)
    finally:
        page.quit()
