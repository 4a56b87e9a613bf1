"""Seconds per frame of the browser viewer (`viewer.py`), without a browser.

    python benchmarks/bench_viewer.py --path runs/demo --threads 2
    python benchmarks/bench_viewer.py --curriculum FFHQ --step 100000 --threads 2   # the paper's model

Times what the viewer does for each frame: `visualize.frames.FrameRenderer.render` (codes,
field, integration, decoder or colour map), at the full size and at the smaller "while
moving" NeRF size, for frames turning around the object, then fitting the frame into a
browser canvas (`letterbox`) and encoding it as the viewer sends it (PNG when still, JPEG
while moving; viser encodes with imageio or OpenCV, as here). With --curriculum instead
of --path, a randomly initialised generator of that curriculum's widths is timed at the
stage of --step (the cost does not depend on the weights). Prints a table and one JSON line;
the CPU seconds (all threads) tell, on a busy machine, what the frame costs without waiting.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as viewer.py runs (set before torch starts OpenMP)

import torch  # noqa: E402

from generators.pretrained import DEFAULT_MAX_BATCH_SIZE, load_model, render_options  # noqa: E402
from visualize.frames import FrameRenderer, ViewSettings, letterbox  # noqa: E402


def random_checkpoint(curriculum_name: str, step: int, folder: str) -> str:
    """A checkpoint of a randomly initialised generator (seed 0) of the curriculum, saved at `step`."""
    from curriculums import extract_metadata, get_curriculum
    from generators.generators import build_generator
    from utils.checkpoint import save_checkpoint

    curriculum = get_curriculum(curriculum_name)
    torch.manual_seed(0)
    state = build_generator(extract_metadata(curriculum, 0)).state_dict()
    path = os.path.join(folder, "checkpoint.pth")
    save_checkpoint(path, {"generator": state, "generator_ema": state, "curriculum": curriculum,
                           "curriculum_name": curriculum_name, "step": step})
    return path


def encode(picture, fmt: str) -> bytes:
    """What viser does with a background image: PNG (still frames) or JPEG quality 80 (moving)."""
    try:
        import cv2
        ok, data = cv2.imencode(f".{fmt}", picture[..., ::-1], [int(cv2.IMWRITE_JPEG_QUALITY), 80] if fmt == "jpeg" else [])
        return data.tobytes()
    except ImportError:
        import io

        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(picture).save(buffer, format="PNG" if fmt == "png" else "JPEG", quality=80)
        return buffer.getvalue()


def time_frames(renderer: FrameRenderer, moving: bool, frames: int, canvas) -> dict:
    render_s, send_s, cpu_s = [], [], []
    for i in range(frames + 1):  # the first frame warms up (codes, allocations) and is not counted
        settings = ViewSettings(yaw=math.pi / 2 + 0.6 * math.sin(i), pitch=math.pi / 2 + 0.1 * math.cos(i))
        cpu = time.process_time()
        frame = renderer.render(settings, moving=moving)
        start = time.perf_counter()
        encode(letterbox(frame.image, *canvas), "jpeg" if moving else "png")
        if i:
            render_s.append(frame.seconds)
            send_s.append(time.perf_counter() - start)
            cpu_s.append(time.process_time() - cpu)
    return {"nerf": frame.nerf_size, "output": frame.image.shape[0],
            "render_s_median": statistics.median(render_s), "render_s_best": min(render_s),
            "frame_cpu_s_median": statistics.median(cpu_s),
            "letterbox_encode_s_median": statistics.median(send_s),
            "frame_s_median": statistics.median(a + b for a, b in zip(render_s, send_s))}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--path", help="checkpoint file or run directory")
    source.add_argument("--curriculum", help="time a randomly initialised generator of this curriculum instead")
    parser.add_argument("--step", type=int, default=0,
                        help="with --curriculum: the step whose stage (NeRF and output size) is timed")
    parser.add_argument("--image_size", type=int, default=None, help="NeRF size of full frames (default: trained)")
    parser.add_argument("--moving_image_size", type=int, default=None,
                        help="NeRF size while moving (default: the viewer's, half the full size, at least 8)")
    parser.add_argument("--frames", type=int, default=5, help="timed frames per size (after one warm-up frame)")
    parser.add_argument("--canvas", type=int, nargs=2, default=(1000, 700), metavar=("WIDTH", "HEIGHT"),
                        help="browser canvas the frame is fitted into")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        path = args.path or random_checkpoint(args.curriculum, args.step, folder)
        model = load_model(path, device=args.device)
    options = render_options(model, args.image_size)
    size = options.rays.img_size
    renderer = FrameRenderer(model, options, args.moving_image_size or min(size, max(8, size // 2)),
                             DEFAULT_MAX_BATCH_SIZE)
    sync = torch.cuda.synchronize if model.device.type == "cuda" else (lambda: None)
    results = {}
    for kind in ("moving", "full"):
        results[kind] = time_frames(renderer, kind == "moving", args.frames, args.canvas)
        sync()
    record = {"checkpoint": args.path or f"random {args.curriculum} at step {args.step}", "device": str(model.device),
              "threads": torch.get_num_threads(), "num_steps": options.rays.num_steps, **results}
    for kind, r in results.items():
        print(f"{kind:6s} {r['nerf']:4d} px NeRF -> {r['output']:4d} px: render {r['render_s_median']:.3f} s "
              f"(best {r['render_s_best']:.3f}), + canvas and encoding {r['letterbox_encode_s_median']:.3f} s "
              f"= {r['frame_s_median']:.3f} s per frame; {r['frame_cpu_s_median']:.3f} CPU s per frame")
    print(json.dumps(record))
    return record


if __name__ == "__main__":
    main()
