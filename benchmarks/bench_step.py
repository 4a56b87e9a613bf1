"""Time one whole training step through the real training code (`train.Trainer.train_step`).

    python benchmarks/bench_step.py --threads 2                 # the paper's stage-0 size, CPU
    python benchmarks/bench_step.py --img_size 32 --num_steps 12 --threads 1
    python benchmarks/bench_step.py --device cuda --precision bf16 --batch_size 56 --batch_split 4
    python benchmarks/bench_step.py --threads 2 --field_impl reference   # the field's plain formula

A step is what the training loop does: the D phase (G forward without grad, D on real
and fake, R1, pose loss, one backward), clipping and the D optimiser step, the G phase
(G forward+backward through D, top-k, pose and photometric losses), clipping, the G
optimiser step and both EMA updates. Defaults are the paper's FFHQ stage 0 at batch 2:
64x64 NeRF, 16 samples per ray, both views, 64x64 output, default widths, batch_split 1,
fp32 on CPU. The real batch is random images (data loading is not timed).

Prints one JSON line: seconds per step (best and median of the timed steps; on a shared
machine `cpu_s_per_step_median`, the process's CPU seconds, is the steadier number), the
per-part breakdown of the median step (`MVCGANLoss.timer` parts; `optimizer_ema` is
the rest: clipping, optimiser steps, EMAs), peak memory (`peak_rss_gb`: the process's
maximum RSS on CPU; `cuda_max_allocated_gb` and `cuda_max_reserved_gb` on CUDA), what
utils/memory_model.py predicts for it (`modelled_peak_gb`, at `batch_split_used`, which is
what `--batch_split auto` chose) and the losses of the first step.
`--count_fresh_pages` runs one more step that counts the bytes of operator outputs of
32 MB or more (`fresh_page_gb_per_step`): on CPU, glibc gives each such block new pages
from the kernel (page faults and zeroing), which is what the CPU path tries to avoid.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager

from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import curriculums  # noqa: E402
from benchmarks.common import add_size_arguments, apply_threads  # noqa: E402
from siren.siren import FIELD_IMPLS, resolve_impl  # noqa: E402
from train import TrainConfig, Trainer  # noqa: E402
from utils.memory_model import AUTO, GB, memory_model  # noqa: E402


MMAP_THRESHOLD_BYTES = 32 * 2 ** 20  # glibc's largest dynamic mmap threshold on 64-bit


class FreshAllocationCounter(TorchDispatchMode):
    """Sums the bytes of operator outputs of at least `threshold` bytes that do not share
    storage with an input (views, in-place and out= results are not new memory)."""

    def __init__(self, threshold: int = MMAP_THRESHOLD_BYTES):
        super().__init__()
        self.threshold, self.total = threshold, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        flat = [*args, *kwargs.values()]
        inputs = {t.untyped_storage().data_ptr() for a in flat
                  for t in (a if isinstance(a, (list, tuple)) else [a]) if isinstance(t, torch.Tensor)}
        out = func(*args, **kwargs)
        for t in (out if isinstance(out, (list, tuple)) else [out]):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                nbytes = t.untyped_storage().nbytes()
                self.total += nbytes if nbytes >= self.threshold else 0
        return out


def batch_split_arg(text: str):
    """--batch_split: a positive integer or "auto"."""
    if text == AUTO:
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or {AUTO!r}, got {text!r}")
    return value


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_size_arguments(p, batch_help="images per step (per process)")
    p.add_argument("--batch_split", type=batch_split_arg, default=1,
                   help="chunks each phase's batch is split into, or auto: the fewest that fit this device's memory "
                        "by utils/memory_model.py (batch_split_used says which)")
    p.add_argument("--step", type=int, default=2000,
                   help="training step the trainer thinks it is at (2000: fade-in done, alpha 1)")
    p.add_argument("--iterations", type=int, default=2,
                   help="timed steps after one warm-up step; 0 times the warm-up step itself (memory curves)")
    p.add_argument("--precision", choices=["fp16", "bf16", "fp32"], default="fp32",
                   help="autocast dtype on CUDA (CPU always runs fp32)")
    p.add_argument("--compile", action="store_true", help="torch.compile the FiLM-SIREN (TrainConfig.compile)")
    p.add_argument("--field_impl", choices=FIELD_IMPLS, default="auto",
                   help="how the FiLM-SIREN computes its forward (siren.siren.FIELD_IMPLS; auto: cpu_lowmem on "
                        "CPU, recompute elsewhere; reference: the plain autograd formula)")
    p.add_argument("--keep_freed_memory", action="store_true",
                   help="CPU: malloc keeps freed blocks (TrainConfig.keep_freed_memory): less kernel time, more RSS")
    p.add_argument("--count_fresh_pages", action="store_true",
                   help="one more step counting outputs of >= 32 MB (new pages on CPU); slower")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    apply_threads(args)
    device = torch.device(args.device)
    if device.type == "cuda":
        device = torch.device("cuda", device.index if device.index is not None else torch.cuda.current_device())
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    stage = dict(curriculums.extract_metadata(curriculums.get_curriculum(args.curriculum), 0))
    stage.update(batch_size=args.batch_size, batch_split=args.batch_split, img_size=args.img_size,
                 num_steps=args.num_steps, output_size=args.output_size)
    stage_keys = {k: stage[k] for k in curriculums.STAGE_KEYS}
    config = TrainConfig(curriculum=args.curriculum, output_dir=tempfile.mkdtemp(prefix="bench_step_"),
                         precision=args.precision, seed=args.seed, device=args.device, progress=False,
                         compile=args.compile, keep_freed_memory=args.keep_freed_memory,
                         curriculum_overrides={0: stage_keys, 10 ** 9: {}})
    trainer = Trainer(0, 1, config, device)
    trainer.generator.siren.impl = args.field_impl  # the field the step trains (the EMA copies only average it)
    trainer.step = args.step
    metadata = curriculums.extract_metadata(trainer.curriculum, 0)
    real = torch.rand(args.batch_size, 3, args.output_size, args.output_size, device=device) * 2 - 1

    parts = defaultdict(float)

    @contextmanager
    def timer(name):
        sync()
        start = time.perf_counter()
        yield
        sync()
        parts[name] += time.perf_counter() - start

    trainer.loss.timer = timer
    steps = []
    for i in range(args.iterations + 1 if args.iterations else 1):
        parts.clear()
        sync()
        start, cpu_start = time.perf_counter(), time.process_time()
        stats = trainer.train_step(real, metadata)
        sync()
        total, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        if i == 0:
            first_stats = {k: stats[k] for k in ("d_loss", "r1", "g_loss", "photometric")}
            batch_split_used = int(stats["batch_split"])
        if i > 0 or args.iterations == 0:  # the first step is a warm-up (allocator, compilation)
            breakdown = dict(parts, optimizer_ema=total - sum(parts.values()))
            steps.append((total, {k: round(v, 3) for k, v in breakdown.items()}, cpu))
    steps.sort(key=lambda s: s[0])
    median_total, median_parts, median_cpu = steps[len(steps) // 2]
    result = {"sec_per_step_best": round(steps[0][0], 3), "sec_per_step_median": round(median_total, 3),
              "cpu_s_per_step_median": round(median_cpu, 3), "parts_s": median_parts,
              "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 3)}
    if args.count_fresh_pages:
        with FreshAllocationCounter() as counter:
            trainer.train_step(real, metadata)
        result["fresh_page_gb_per_step"] = round(counter.total / 2 ** 30, 3)
    if device.type == "cuda":
        result["cuda_max_allocated_gb"] = round(torch.cuda.max_memory_allocated(device) / GB, 3)
        result["cuda_max_reserved_gb"] = round(torch.cuda.max_memory_reserved(device) / GB, 3)
    # utils/memory_model.py's peak for this run, next to the measured one (fit_memory_model recalibrates it)
    model = memory_model(device, args.precision)
    result.update(batch_split_used=batch_split_used, hidden_dim=int(metadata["hidden_dim"]),
                  modelled_peak_gb=round(model.peak_bytes(metadata, batch_split_used) / GB, 3))
    result.update(first_step_losses={k: round(v, 6) for k, v in first_stats.items()}, **vars(args),
                  field_impl_used=resolve_impl(args.field_impl, device), threads_used=torch.get_num_threads(),
                  torch=torch.__version__)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
