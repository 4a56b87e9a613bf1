"""Time a training forward+backward of the generator and a staged (inference) forward.

    python benchmarks/bench_generator.py                      # the paper's size, CPU
    python benchmarks/bench_generator.py --device cuda --batch_size 14 --amp fp16

Defaults are the paper's stage-0 sizes: batch 2, 64x64 NeRF, 16 samples per ray, both
views, 64x64 output, default widths. Prints one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from contextlib import nullcontext

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from benchmarks.common import add_size_arguments, apply_threads  # noqa: E402
from curriculums import extract_metadata, get_curriculum  # noqa: E402
from generators.generators import RenderOptions, build_generator  # noqa: E402
from losses import photometric_loss  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_size_arguments(p, batch_help="latents per forward")
    p.add_argument("--iterations", type=int, default=3, help="timed iterations (after one warm-up)")
    p.add_argument("--amp", choices=["none", "fp16", "bf16"], default="none", help="autocast dtype on CUDA")
    args = p.parse_args(argv)
    apply_threads(args)
    device = torch.device(args.device)
    metadata = extract_metadata(get_curriculum(args.curriculum), 0)
    generator = build_generator(metadata).to(device)
    options = RenderOptions.from_metadata(metadata, nerf_noise=1.0, img_size=args.img_size,
                                          num_steps=args.num_steps, output_size=args.output_size)
    autocast = (lambda: torch.autocast("cuda", dtype=getattr(torch, {"fp16": "float16", "bf16": "bfloat16"}[args.amp]))
                ) if args.amp != "none" else nullcontext
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    z = torch.randn(args.batch_size, generator.z_dim, device=device)

    def train_step():
        with autocast():
            out = generator(z, 1.0, options)
            loss = out.image.float().mean() + photometric_loss(out.warped_aux_rgb.float(), out.primary_rgb.float())
        loss.backward()
        generator.zero_grad(set_to_none=True)

    def staged():
        with autocast():
            generator.staged_forward(z, options, psi=0.7)

    results = {}
    for name, fn in (("train_forward_backward", train_step), ("staged_forward", staged)):
        fn()
        sync()
        times = []
        for _ in range(args.iterations):
            start = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - start)
        results[f"{name}_best_s"] = round(min(times), 3)
        results[f"{name}_median_s"] = round(sorted(times)[len(times) // 2], 3)
    results.update(vars(args), threads_used=torch.get_num_threads(), torch=torch.__version__)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
