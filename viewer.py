"""Look around a generated object in your browser: a web viewer on the machine that holds the model.

    pip install -r requirements-viewer.txt
    python viewer.py --path runs/demo                 # then open http://localhost:8080
    python viewer.py --path ffhq.pth --codes inv/codes.pth   # an inverted photo's object (invert.py)

The server renders, the browser shows (viser: a web page with a 3D canvas and controls,
reached over an SSH port forward from a headless training machine). Drag in the canvas to
orbit the object (any yaw and pitch, inside and beyond the training range), scroll to zoom
(a narrower field of view, since the generator's camera stays on its unit sphere). The
controls set the seed, the truncation psi, style mixing (the decoder's style from a second
seed), what is shown (the decoded image, the NeRF's low-resolution RGB, its depth, its
shaded geometry) and the field of view; two buttons save the current view as PNG and the
current object as a coloured PLY mesh (colours from the decoded images by default, or the
field's RGB; written to --output_dir and offered as a download). A save that would replace a file
the viewer did not write itself (an earlier session's) is refused in the page unless --overwrite.
While the camera moves, frames are rendered at a lower NeRF size and sent as JPEG; once it
has been still for --settle seconds, at full size as PNG. Each frame reports its time.
Frames are rendered by `visualize.frames`; the codes file is invert.py's (`inversion/codes_file.py`).
Entry point: `main(argv)`.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Optional, Sequence

VIEWER_REQUIREMENTS = "requirements-viewer.txt"
SEED_MAX = 9999
MESH_RESOLUTIONS = (32, 256)
MESH_COLOURS = {"decoded images": "image", "field RGB": "ray", "none": "none"}  # -> extract_shapes --colour
CAMERA_WAIT_S = 3.0  # how long a new tab's frames wait for its camera to reach the start pose


def import_viser():
    """viser, or CLIError naming what to install (the viewer is an optional extra)."""
    from utils.cli import CLIError

    try:
        import viser
    except ImportError as error:
        raise CLIError(f"the viewer needs the viser package, which is not installed ({error}): "
                       f"pip install -r {VIEWER_REQUIREMENTS}") from None
    return viser


# ------------------------------------------------------------------------ CLI
def build_parser() -> argparse.ArgumentParser:
    from utils.cli import HelpFormatter, finite_float
    from utils.rendering_cli import add_model_arguments, add_overwrite_argument

    parser = argparse.ArgumentParser(description="Look around generated objects of an MVCGAN checkpoint in a web "
                                                 "browser (viser), and save views and coloured meshes.",
                                     formatter_class=HelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--port", type=int, default=8080,
                        help="port of the web page (0: any free port); a busy port is replaced by the next free one, "
                             "and the line printed at start names the one in use")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on: 127.0.0.1 serves this machine only (reach it through an SSH "
                             "port forward), 0.0.0.0 every network interface; an address this machine does not "
                             "have is refused at start")
    parser.add_argument("--seed", type=int, default=0, help=f"seed of the first object's z (0 to {SEED_MAX})")
    parser.add_argument("--style_seed", type=int, default=None,
                        help="start with style mixing on: the decoder's style from this seed's z")
    parser.add_argument("--codes", default=None,
                        help="a codes file written by invert.py (e.g. inv/codes.pth) to open as the first object, "
                             "at its fitted camera (and with its tuned generator, when it has one); needs the "
                             "checkpoint the codes were fitted to as --path")
    parser.add_argument("--image_size", type=int, default=None,
                        help="NeRF resolution of the still frames (default: the trained stage's img_size)")
    parser.add_argument("--output_size", type=int, default=None,
                        help="decoded image size of the still frames: image_size * 2^n (default: the trained "
                             "stage's number of decoder blocks)")
    parser.add_argument("--num_steps", type=int, default=None,
                        help="depth samples per ray (default: the trained stage's num_steps)")
    parser.add_argument("--allow_untrained_blocks", action="store_true",
                        help="allow an --output_size that needs decoder blocks the checkpoint never trained")
    parser.add_argument("--moving_image_size", type=int, default=None,
                        help="NeRF resolution while the camera or a control moves (default: half the still "
                             "frames', at least 8)")
    parser.add_argument("--settle", type=finite_float, default=0.25,
                        help="seconds without changes after which the full-size frame is rendered")
    parser.add_argument("--output_dir", default="runs/viewer", help="folder the save buttons write to")
    add_overwrite_argument(parser, help="let the save buttons replace files of the same names already in "
                                        "--output_dir; without it a save that would replace a file this viewer did "
                                        "not write itself is refused, saying so in the page")
    parser.add_argument("--mesh_resolution", type=int, default=128,
                        help=f"voxels per axis of saved meshes, {MESH_RESOLUTIONS[0]} to {MESH_RESOLUTIONS[1]} "
                             "(a slider in the page)")
    return parser


def check_args(args) -> None:
    from utils.cli import CLIError

    if not 0 <= args.port <= 65535:
        raise CLIError(f"--port must be in 0..65535, got {args.port}")
    for name in ("seed", "style_seed"):
        value = getattr(args, name)
        if value is not None and not 0 <= value <= SEED_MAX:
            raise CLIError(f"--{name} must be in 0..{SEED_MAX}, got {value}")
    if args.moving_image_size is not None and args.moving_image_size < 2:
        raise CLIError(f"--moving_image_size must be at least 2, got {args.moving_image_size}")
    if not MESH_RESOLUTIONS[0] <= args.mesh_resolution <= MESH_RESOLUTIONS[1]:
        raise CLIError(f"--mesh_resolution must be in {MESH_RESOLUTIONS[0]}..{MESH_RESOLUTIONS[1]}, "
                       f"got {args.mesh_resolution}")
    if args.settle < 0:
        raise CLIError(f"--settle must be >= 0, got {args.settle}")
    if args.max_batch_size < 1:
        raise CLIError(f"--max_batch_size must be at least 1, got {args.max_batch_size}")


def check_listen_address(host: str, port: int) -> None:
    """CLIError unless the server can listen on `host`: a name or address that resolves to one of this
    machine's addresses, and a port it may take (a busy one is fine: the server takes the next free one).
    viser takes every OSError for a busy port and tries the next one forever, so a host this machine does
    not have would hang in silence."""
    import errno
    import re

    from utils.cli import CLIError

    numeric = re.fullmatch(r"[0-9.]+|.*:.*", host) is not None  # an address, never a name to look up
    try:
        family, kind, _, _, address = socket.getaddrinfo(
            host, None, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST if numeric else 0)[0]
    except (socket.gaierror, UnicodeError) as error:
        reason = "not an IP address" if numeric else getattr(error, "strerror", None) or str(error)
        raise CLIError(f"--host {host}: {reason}; give an address of this machine (127.0.0.1, or 0.0.0.0 for every "
                       f"network interface)") from None
    with socket.socket(family, kind) as probe:
        try:
            probe.bind((address[0], port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                return
            raise CLIError(f"--host {host} --port {port}: cannot listen there ({error.strerror}); give an address "
                           f"of this machine (127.0.0.1, or 0.0.0.0 for every network interface)") from None


def prepare(args):
    """Load the checkpoint, the codes file and the frame renderer: everything but the server."""
    from utils.cpu_runtime import set_threads
    from generators.pretrained import load_fitted_codes, load_model, render_options
    from visualize.frames import FrameRenderer

    set_threads(args.threads)
    model = load_model(args.path, args.curriculum, use_ema=not args.no_ema, device=args.device)
    options = render_options(model, args.image_size, args.output_size, args.num_steps,
                             allow_untrained_blocks=args.allow_untrained_blocks)
    # invert.py's file (inversion/codes_file.py); a tuned generator in it replaces the checkpoint's
    codes_file = load_fitted_codes(model, args.codes) if args.codes is not None else None
    size = options.rays.img_size
    moving_size = args.moving_image_size or min(size, max(8, size // 2))
    return FrameRenderer(model, options, moving_size, args.max_batch_size, codes_file)


# -------------------------------------------------------------- one browser tab
def start_position(renderer, codes_camera: bool = True):
    """The first camera: the codes file's when it has one (and `codes_camera`), else the curriculum's mean pose."""
    from visualize.frames import ORBIT_DISTANCE, camera_position

    pose, codes_file = renderer.full.pose, renderer.codes_file
    yaw, pitch = pose.h_mean, pose.v_mean
    if codes_file is not None and codes_camera:
        yaw, pitch = codes_file.yaw, codes_file.pitch
    return camera_position(yaw, pitch, ORBIT_DISTANCE)


class Session:
    """One connected browser tab: its controls, its camera and the thread that renders its frames."""

    def __init__(self, app: "ViewerApp", client):
        self.app, self.client = app, client
        self.state_lock = threading.Lock()
        self.changed = threading.Event()
        self.version, self.last_change, self.frames = 0, time.monotonic(), 0
        self.running = True
        self.last_frame = None
        self.connected_at = time.monotonic()
        self.camera_ready = False  # the browser has reported its camera at the start pose (or gave up)
        self._build_gui()
        client.camera.on_update(self._camera_moved)
        self.thread = threading.Thread(target=self._loop, name=f"render-{client.client_id}", daemon=True)
        self.thread.start()

    # ------------------------------------------------------------ controls
    def _build_gui(self) -> None:
        from visualize.frames import MODES

        args, gui, renderer = self.app.args, self.client.gui, self.app.renderer
        fov = renderer.full.rays.fov
        self.status = gui.add_markdown("waiting for the first frame")
        with gui.add_folder("Object"):
            self.use_codes = None
            if renderer.codes_file is not None:
                self.use_codes = gui.add_checkbox("codes file", initial_value=True,
                                                  hint=f"show the object of {args.codes}; untick for the seed's")
            self.seed = gui.add_slider("seed", min=0, max=SEED_MAX, step=1, initial_value=args.seed,
                                       hint="seed of the object's z")
            self.psi = gui.add_slider("psi", min=0.0, max=1.5, step=0.05, initial_value=float(args.psi),
                                      hint="truncation: codes = mean + psi (codes - mean); 1: none")
            self.mix = gui.add_checkbox("style mixing", initial_value=args.style_seed is not None,
                                        hint="the decoder's style from the style seed, the NeRF from the seed")
            self.style_seed = gui.add_slider("style seed", min=0, max=SEED_MAX, step=1,
                                             initial_value=args.style_seed or 0)
        with gui.add_folder("View"):
            self.mode = gui.add_dropdown("show", MODES, initial_value="image",
                                         hint="the decoded image, the NeRF's low-resolution RGB, its depth "
                                              "(turbo: dark red near, dark purple far) or its shaded geometry")
            self.fov = gui.add_slider("field of view", min=1.0, max=max(60.0, 2 * fov), step=0.5,
                                      initial_value=float(fov), hint="degrees; the curriculum's is the default")
            self.camera_text = gui.add_markdown("")
            reset = gui.add_button("reset camera", hint="back to the front view (or the codes file's camera)")
            reset.on_click(lambda _: self.reset_camera())
        with gui.add_folder("Save"):
            save_view = gui.add_button("save view (PNG)", hint=f"the full-size frame, to {args.output_dir}")
            self.mesh_resolution = gui.add_slider("mesh resolution", min=MESH_RESOLUTIONS[0],
                                                  max=MESH_RESOLUTIONS[1], step=16,
                                                  initial_value=args.mesh_resolution)
            self.mesh_colours = gui.add_dropdown("mesh colours", tuple(MESH_COLOURS), initial_value="decoded images",
                                                 hint="decoded images: the pictures' colours projected from 16 "
                                                      "views; field RGB: the NeRF's colour at the surface "
                                                      "(extract_shapes.py --colour image / ray)")
            save_mesh = gui.add_button("save mesh (PLY)", hint=f"marching cubes at density 10 with vertex colours, "
                                                                f"to {args.output_dir}")
        save_view.on_click(lambda _: self._guarded(self.save_view))
        save_mesh.on_click(lambda _: self._guarded(self.save_mesh))
        for handle in (self.use_codes, self.seed, self.psi, self.mix, self.style_seed, self.mode, self.fov):
            if handle is not None:
                handle.on_update(lambda _: self.touch())

    def reset_camera(self) -> None:
        camera = self.client.camera
        # viser moves look_at along with position: set the position first, then the centre
        camera.position = tuple(start_position(self.app.renderer, self.use_codes is None or self.use_codes.value))
        camera.look_at = (0.0, 0.0, 0.0)
        self.touch()

    def _camera_moved(self, camera) -> None:
        """A camera report from the browser. A new tab reports its own default camera before it applies
        the server's start pose (viser's initial_camera); frames wait until it is at the start pose."""
        if not self.camera_ready:
            from visualize.frames import pose_from_camera

            start = pose_from_camera(start_position(self.app.renderer))
            now = pose_from_camera(camera.position, camera.look_at)
            self.camera_ready = (max(abs(a - b) for a, b in zip(start, now)) < 1e-3
                                 or time.monotonic() - self.connected_at > CAMERA_WAIT_S)
        self.touch()

    def touch(self) -> None:
        """Something changed: render again (small while changes keep coming)."""
        with self.state_lock:
            self.version += 1
            self.last_change = time.monotonic()
        self.changed.set()

    def settings(self):
        """The ViewSettings of the controls and the camera now."""
        from visualize.frames import ViewSettings, pose_from_camera, zoomed_fov

        camera = self.client.camera
        yaw, pitch, distance = pose_from_camera(camera.position, camera.look_at)
        return ViewSettings(seed=int(self.seed.value), psi=float(self.psi.value),
                            style_seed=int(self.style_seed.value) if self.mix.value else None,
                            use_codes_file=bool(self.use_codes is not None and self.use_codes.value),
                            mode=self.mode.value, yaw=yaw, pitch=pitch,
                            fov=zoomed_fov(float(self.fov.value), distance))

    # -------------------------------------------------------------- frames
    def _loop(self) -> None:
        shown_version, shown_full = -1, False
        while self.running:
            self.changed.wait(timeout=0.05)
            self.changed.clear()
            with self.state_lock:
                version, quiet = self.version, time.monotonic() - self.last_change
            still = quiet >= self.app.args.settle
            if not self.camera_ready or (version == shown_version and (shown_full or not still)):
                continue
            try:
                settings = self.settings()
            except AssertionError:  # the browser has not sent its camera yet
                continue
            try:
                self.show(self.app.render(settings, moving=not still))
            except Exception as error:  # keep serving: say what failed in the page and the log
                traceback.print_exc()
                self.status.content = f"**render failed**: {type(error).__name__}: {error}"
            shown_version, shown_full = version, still

    def show(self, frame) -> None:
        from visualize.frames import letterbox, wrapped_offset

        start = time.perf_counter()
        camera = self.client.camera
        picture = letterbox(frame.image, camera.image_width, camera.image_height)
        self.client.scene.set_background_image(picture, format="jpeg" if frame.moving else "png", jpeg_quality=80)
        total = frame.seconds + time.perf_counter() - start
        self.frames += 1
        self.last_frame = frame
        s, pose = frame.settings, self.app.renderer.full.pose
        size = frame.image.shape[0]
        self.status.content = (
            f"frame {self.frames} · {'moving' if frame.moving else 'full'} · {frame.nerf_size} px NeRF → {size} px "
            f"· render {frame.seconds:.3f} s · frame {total:.3f} s  \n"
            f"yaw {s.yaw:.6f} pitch {s.pitch:.6f} fov {s.fov:.4f} · {s.mode} · "
            + ("codes file" if s.use_codes_file else f"seed {s.seed} psi {s.psi:g}"
               + (f" style {s.style_seed}" if s.style_seed is not None else "")))
        dyaw, dpitch = wrapped_offset(s.yaw, pose.h_mean), s.pitch - pose.v_mean
        self.camera_text.content = (
            f"yaw {dyaw:+.2f}, pitch {dpitch:+.2f} rad from the front; training "
            f"±{pose.h_stddev:.2f}, ±{pose.v_stddev:.2f} (1σ): "
            f"{abs(dyaw) / pose.h_stddev if pose.h_stddev else 0:.1f}σ, "
            f"{abs(dpitch) / pose.v_stddev if pose.v_stddev else 0:.1f}σ")

    # ---------------------------------------------------------------- save
    def _guarded(self, action) -> None:
        from utils.run_dir import ExistingFile

        try:
            action()
        except ExistingFile as error:  # an earlier session's file: kept, and the page says how to replace it
            print(f"error: {error}", file=sys.stderr, flush=True)
            self.client.add_notification("not saved", str(error), color="red", auto_close_seconds=10)
        except Exception as error:
            traceback.print_exc()
            self.client.add_notification("saving failed", f"{type(error).__name__}: {error}",
                                         color="red", auto_close_seconds=10)

    def _deliver(self, path: Path, what: str) -> None:
        print(f"saved {path}", flush=True)
        self.client.send_file_download(path.name, path.read_bytes())
        self.client.add_notification(f"saved {what}", str(path), auto_close_seconds=6)

    def object_name(self, settings) -> str:
        if settings.use_codes_file:
            return Path(self.app.args.codes).stem
        return f"seed{settings.seed}_psi{settings.psi:g}" + (
            f"_style{settings.style_seed}" if settings.style_seed is not None else "")

    def save_view(self) -> Path:
        from utils.images import save_image

        settings = self.settings()
        name = f"view_{self.object_name(settings)}_{settings.mode.replace(' ', '')}_yaw{settings.yaw:.3f}" \
               f"_pitch{settings.pitch:.3f}.png"
        path = self.app.files.path(name)  # refused before the render when an earlier session's file is there
        frame = self.app.render(settings, moving=False)
        path = save_image(frame.image, path)
        self._deliver(path, "view")
        return path

    def save_mesh(self) -> Optional[Path]:
        from shapes.mesh import DEFAULT_LEVEL, coloured_mesh, default_cube_size
        from shapes.ply import write_ply

        settings = self.settings()
        path = self.app.files.path(f"mesh_{self.object_name(settings)}.ply")  # checked before the mesh is made
        resolution = int(self.mesh_resolution.value)
        model, renderer = self.app.renderer.model, self.app.renderer
        note = self.client.add_notification("making the mesh", f"{resolution}^3 voxels …", loading=True,
                                            with_close_button=False)
        try:
            with self.app.render_lock:
                codes = renderer.codes(settings)
                mesh = coloured_mesh(model, codes, resolution, default_cube_size(model.metadata), DEFAULT_LEVEL,
                                     MESH_COLOURS[self.mesh_colours.value], self.app.args.max_batch_size)
        except ValueError as error:  # no surface at this level
            self.client.add_notification("no mesh", str(error), color="yellow", auto_close_seconds=10)
            return None
        finally:
            note.remove()
        path = write_ply(path, mesh.vertices, mesh.faces, colours=mesh.colours)
        self._deliver(path, f"mesh ({len(mesh.vertices)} vertices)")
        return path

    def close(self) -> None:
        self.running = False
        self.changed.set()


# ----------------------------------------------------------------------- app
class ViewerApp:
    """The server: one FrameRenderer shared by all tabs, one frame rendered at a time."""

    def __init__(self, args, renderer, viser):
        from utils.run_dir import OutputFiles

        self.args, self.renderer = args, renderer
        self.files = OutputFiles(args.output_dir, overwrite=args.overwrite)  # what the save buttons wrote
        self.render_lock = threading.Lock()
        self.sessions = {}
        self.server = viser.ViserServer(host=args.host, port=args.port, verbose=False)
        self.server.scene.set_up_direction("+y")  # the generator's world up (docs/METHOD.md §1)
        self.server.gui.configure_theme(show_share_button=False)
        self.server.gui.main_panel.dock_right()
        # Where a new tab's camera starts (the tab sends it back as its first camera state).
        self.server.initial_camera.position = tuple(start_position(renderer))
        self.server.initial_camera.look_at = (0.0, 0.0, 0.0)
        self.server.on_client_connect(self._connect)
        self.server.on_client_disconnect(self._disconnect)

    def render(self, settings, moving: bool):
        with self.render_lock:
            return self.renderer.render(settings, moving)

    def _connect(self, client) -> None:
        self.sessions[client.client_id] = Session(self, client)

    def _disconnect(self, client) -> None:
        session = self.sessions.pop(client.client_id, None)
        if session is not None:
            session.close()

    @property
    def port(self) -> int:
        return self.server.get_port()

    def stop(self) -> None:
        for session in list(self.sessions.values()):
            session.close()
        self.server.stop()


def serve(args) -> None:
    """Everything main() does after parsing: check, load, serve until interrupted."""
    from utils.rendering_cli import prepare_output_dir

    check_args(args)
    check_listen_address(args.host, args.port)
    prepare_output_dir(args.output_dir)
    viser = import_viser()
    renderer = prepare(args)
    app = ViewerApp(args, renderer, viser)
    rays = renderer.full.rays
    print(f"{renderer.model.checkpoint_path}: step {renderer.model.step}, "
          f"{'EMA' if renderer.model.use_ema else 'raw'} weights; frames at a {rays.img_size} px NeRF x "
          f"{rays.num_steps} steps -> {renderer.full.output_size} px ({renderer.moving.rays.img_size} px NeRF "
          f"while moving) on {renderer.model.device}", flush=True)
    if args.port and app.port != args.port:
        print(f"port {args.port} is busy; using {app.port}", flush=True)
    print(f"open http://localhost:{app.port} (from another machine: ssh -L {app.port}:localhost:{app.port} "
          f"{socket.gethostname()})", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        app.stop()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """0 after Ctrl-C or SIGTERM, 2 for bad input or a missing viser (one `error:` line)."""
    # Before torch starts OpenMP: idle threads sleep instead of spinning. The server waits between
    # frames, often beside a training run; spinning threads that wait for a preempted one made a demo
    # frame 0.66 s instead of 0.09 s on 2 busy cores (benchmarks/bench_viewer.py).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from utils.cli import run_cli

    args = build_parser().parse_args(argv)
    return run_cli(lambda: serve(args))


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # Ctrl-C before the server started serving (loading torch, the checkpoint)
        sys.exit(130)
