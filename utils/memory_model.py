"""How much memory a training step needs, and `batch_split: "auto"`: the fewest chunks that fit.

A training step's peak memory is modelled as

    peak = fixed + chunk * chunk_bytes_per_image + batch * batch_bytes_per_image

with chunk = batch_size / batch_split, the images one generator pass holds for backward:

* `fixed`: models, optimiser state, the framework's own memory;
* `chunk_bytes_per_image` = img_size**2 * num_steps * (per_sample + per_sample_channel * hidden_dim)
  + output_size**2 * per_decoder_pixel: the FiLM-SIREN's saved activations of both views (the bulk
  of a step) and the 2D decoder's, kept for each chunk's backward;
* `batch_bytes_per_image` = output_size**2 * per_disc_pixel: the discriminator and R1 in the D
  phase, which run on the whole batch at once.

The constants (`MEMORY_MODELS`) come from the peak RSS of `benchmarks/bench_step.py --iterations 0`
on CPU, fp32 (docs/PERFORMANCE.md; GB = 2**30 bytes, as bench_step reports), FFHQ widths (hidden 256)
unless noted, 64x64 NeRF, 16 samples:

* output 64, batch 1 / 2 / 4 / 8 (split 1): 2.60 / 3.98 / 6.83 / 12.38 GB: 1.18 GB `fixed` and
  1.40 GB per image;
* output 256, batch 2 in 1 and in 2 chunks: 5.96 and 4.04 GB, so 1.92 GB per chunk image and
  0.39 GB per batch image at that output (6.4 kB per pixel, `per_disc_pixel`); with the line
  above, 9.5 kB per pixel in the chunk (`per_decoder_pixel`) and 21.9 kB per sample for the field;
* Synthetic widths (hidden 64), output 64, batch 2 / 4: 1.58 / 2.34 GB, 0.38 GB per image: the
  field's per-sample bytes are 0.7 kB + 83 bytes per hidden channel.

Checks: batch 1 at output 256 measured 3.65 GB, modelled 3.49; at output 512, 5.31 GB against
6.40 (the per-pixel terms over-estimate large outputs); `USABLE_SHARE` keeps headroom for such
errors. CUDA with fp16/bf16 autocast keeps activations in half precision: its rows halve the
activation terms, an *estimate* until measured; `fit_memory_model` recalibrates a model from
`bench_step.py` results at two chunk sizes (`benchmarks/gpu_acceptance.py` prints the fit).
Entry points: `choose_batch_split`, `auto_batch_split`, `MemoryModel.peak_bytes`, `fit_memory_model`.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Iterable, Mapping, Optional, Tuple

import torch

GB = 2 ** 30
AUTO = "auto"  # the curriculum value that asks for this module's choice
# Of the memory the device has for this process, the share the model may plan for: the caching
# allocator's fragmentation, the data loader and the model's own error need the rest.
USABLE_SHARE = 0.85


@dataclass(frozen=True)
class MemoryModel:
    """peak = fixed + chunk * chunk_bytes_per_image + batch * batch_bytes_per_image (module docstring)."""

    fixed: float                # bytes
    per_sample: float           # bytes per ray sample (img_size**2 * num_steps) and image, any width
    per_sample_channel: float   # bytes per ray sample, image and hidden channel of the field
    per_decoder_pixel: float    # bytes per output pixel and image in a chunk (2D decoder)
    per_disc_pixel: float       # bytes per output pixel and image in the batch (discriminator, R1)
    source: str = ""            # where the numbers come from

    def chunk_bytes_per_image(self, metadata: Mapping) -> float:
        samples = int(metadata["img_size"]) ** 2 * int(metadata["num_steps"])
        return samples * (self.per_sample + self.per_sample_channel * int(metadata["hidden_dim"])) \
            + int(metadata["output_size"]) ** 2 * self.per_decoder_pixel

    def batch_bytes_per_image(self, metadata: Mapping) -> float:
        return int(metadata["output_size"]) ** 2 * self.per_disc_pixel

    def peak_bytes(self, metadata: Mapping, batch_split: int) -> float:
        """The modelled peak of one training step of the stage `metadata` in `batch_split` chunks."""
        batch = int(metadata["batch_size"])
        chunk = math.ceil(batch / batch_split)
        return self.fixed + chunk * self.chunk_bytes_per_image(metadata) + batch * self.batch_bytes_per_image(metadata)

    def scaled(self, factor: float, source: str) -> "MemoryModel":
        """The same fixed bytes with every activation term times `factor`."""
        return dataclasses.replace(self, per_sample=self.per_sample * factor,
                                   per_sample_channel=self.per_sample_channel * factor,
                                   per_decoder_pixel=self.per_decoder_pixel * factor,
                                   per_disc_pixel=self.per_disc_pixel * factor, source=source)


_CPU_FP32 = MemoryModel(fixed=1.18 * GB, per_sample=700.0, per_sample_channel=83.0, per_decoder_pixel=9.5e3,
                        per_disc_pixel=6.4e3, source="bench_step.py peak RSS, CPU fp32 (measured; module docstring)")
# {(device type, precision): model}; CPU trains in fp32 whatever the precision flag says.
MEMORY_MODELS = {
    ("cpu", "fp32"): _CPU_FP32,
    ("cuda", "fp32"): dataclasses.replace(_CPU_FP32, source="CPU fp32 numbers (estimate for CUDA, not measured)"),
    ("cuda", "fp16"): _CPU_FP32.scaled(0.5, "CPU fp32 numbers, half-size activations (estimate, not measured)"),
    ("cuda", "bf16"): _CPU_FP32.scaled(0.5, "CPU fp32 numbers, half-size activations (estimate, not measured)"),
}


def memory_model(device: torch.device, precision: str) -> MemoryModel:
    """The model for training on `device` at `precision` (CPU always trains in fp32)."""
    if device.type != "cuda":
        return MEMORY_MODELS[("cpu", "fp32")]
    return MEMORY_MODELS[("cuda", precision)]


def choose_batch_split(batch: int, budget_bytes: float, per_image_bytes: float, fixed_bytes: float) -> int:
    """The fewest chunks that keep fixed_bytes + chunk * per_image_bytes within budget_bytes and divide
    `batch` (chunks of equal size, as a curriculum's batch_split must); `batch` (one image per chunk)
    when even that does not fit."""
    if batch < 1 or per_image_bytes <= 0:
        raise ValueError(f"need batch >= 1 and per_image_bytes > 0, got {batch} and {per_image_bytes}")
    largest_chunk = math.floor((budget_bytes - fixed_bytes) / per_image_bytes)
    if largest_chunk < 1:
        return batch
    needed = math.ceil(batch / largest_chunk)
    return next(split for split in range(needed, batch + 1) if batch % split == 0)


def _meminfo_bytes(field: str) -> Optional[int]:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    return None


def _own_rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def usable_memory_bytes(device: torch.device) -> Tuple[float, str]:
    """(bytes this process can use for training on `device`, how that was read): what is free plus
    what the process already holds (its models are part of the model's `fixed`)."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        held = torch.cuda.memory_reserved(device)
        return free + held, f"torch.cuda.mem_get_info: {free / GB:.1f} GB free of {total / GB:.1f} GB, " \
                            f"{held / GB:.1f} GB held by this process"
    available = _meminfo_bytes("MemAvailable")
    if available is None:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    held = _own_rss_bytes()
    return available + held, f"{available / GB:.1f} GB available RAM, {held / GB:.1f} GB held by this process"


@dataclass(frozen=True)
class SplitChoice:
    """What `auto_batch_split` chose, and why (for the log)."""

    batch_split: int
    peak_bytes: float     # the model's peak at that split
    budget_bytes: float   # USABLE_SHARE of the usable memory
    memory_source: str    # how the usable memory was read
    model_source: str

    def describe(self) -> str:
        fits = "fits" if self.peak_bytes <= self.budget_bytes else "may NOT fit even at one image per chunk"
        return (f"batch_split auto: {self.batch_split} chunks, modelled peak {self.peak_bytes / GB:.1f} GB of a "
                f"{self.budget_bytes / GB:.1f} GB budget ({fits}; {self.memory_source}; model: {self.model_source})")


def auto_batch_split(metadata: Mapping, device: torch.device, precision: str,
                     budget_bytes: Optional[float] = None, model: Optional[MemoryModel] = None) -> SplitChoice:
    """The batch_split for the stage `metadata` on `device`: `choose_batch_split` with the memory model's
    per-image and fixed bytes, against USABLE_SHARE of the device's usable memory (or `budget_bytes`)."""
    model = model or memory_model(device, precision)
    if budget_bytes is None:
        usable, memory_source = usable_memory_bytes(device)
        budget_bytes = usable * USABLE_SHARE
    else:
        memory_source = "a given budget"
    batch = int(metadata["batch_size"])
    fixed = model.fixed + batch * model.batch_bytes_per_image(metadata)
    split = choose_batch_split(batch, budget_bytes, model.chunk_bytes_per_image(metadata), fixed)
    return SplitChoice(split, model.peak_bytes(metadata, split), budget_bytes, memory_source, model.source)


def fit_memory_model(records: Iterable[Mapping], base: MemoryModel) -> MemoryModel:
    """`base` recalibrated from `bench_step.py` results (its JSON lines) of one stage size at two or more
    chunk sizes. The least-squares line of peak memory (`cuda_max_allocated_gb`, else `peak_rss_gb`)
    against the chunk: its slope over `base`'s chunk bytes per image scales every activation term (one
    factor: what a change of precision does), its intercept less the batch term gives `fixed`."""
    points, sizes = [], set()
    for record in records:
        peak = record.get("cuda_max_allocated_gb", record.get("peak_rss_gb"))
        chunk = math.ceil(record["batch_size"] / record.get("batch_split_used", record["batch_split"]))
        points.append((chunk, peak * GB))
        sizes.add(tuple(record[k] for k in ("batch_size", "img_size", "num_steps", "output_size", "hidden_dim")))
    if len(sizes) != 1 or len({chunk for chunk, _ in points}) < 2:
        raise ValueError("fit_memory_model needs bench_step results of one stage size at two or more chunk sizes")
    batch, img_size, num_steps, output_size, hidden_dim = sizes.pop()
    stage = {"batch_size": batch, "img_size": img_size, "num_steps": num_steps, "output_size": output_size,
             "hidden_dim": hidden_dim}
    n = len(points)
    mean_chunk, mean_peak = sum(c for c, _ in points) / n, sum(p for _, p in points) / n
    slope = sum((c - mean_chunk) * (p - mean_peak) for c, p in points) / sum((c - mean_chunk) ** 2 for c, _ in points)
    fitted = base.scaled(slope / base.chunk_bytes_per_image(stage),
                         f"fitted to {n} bench_step results (chunks {sorted(c for c, _ in points)})")
    fixed = mean_peak - slope * mean_chunk - batch * fitted.batch_bytes_per_image(stage)
    return dataclasses.replace(fitted, fixed=fixed)
