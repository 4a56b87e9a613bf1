"""The flags and checks every "load a checkpoint and render something" script shares.

`render_multiview_image.py`, `extract_shapes.py`, `invert.py`, `viewer.py` and `fid_evaluation.py`
use these instead of copies of them: the model flags (`add_model_arguments`: the checkpoint, the
curriculum it is checked against, EMA or raw weights, truncation, points per SIREN call, device,
threads) and `--codes` (`add_codes_argument`), an output folder checked before the work
(`prepare_output_dir`), its files never replaced unless `--overwrite` says so
(`add_overwrite_argument`, `output_files`), and a size refused before it is allocated when it cannot
fit in memory (`check_memory`, `render_memory_bytes`). What the flags choose is done by the Python API,
`generators.pretrained` (loading, render options, seeds, cameras, rendering); the exit-code convention
(`run_cli`, `CLIError`) is `utils.cli`'s.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Optional, Sequence

import torch

from generators.generators import RenderOptions
from generators.pretrained import DEFAULT_MAX_BATCH_SIZE, DEFAULT_PSI, LoadedModel
from utils.cli import CLIError, describe_os_error, finite_float
from utils.cpu_runtime import add_threads_argument
from utils.run_dir import OutputFiles, check_output_path


# ----------------------------------------------------------------------- flags
def add_model_arguments(parser: argparse.ArgumentParser, psi: Optional[float] = DEFAULT_PSI,
                        psi_note: str = "not applied to --codes",
                        max_batch_size: Optional[int] = DEFAULT_MAX_BATCH_SIZE) -> None:
    """Flags for choosing the checkpoint, the weights, the device, the points per SIREN call (default
    `max_batch_size`; None: the generator's own chunking) and, unless `psi` is None, the truncation
    (default `psi`, its help ending in `psi_note`)."""
    parser.add_argument("--path", required=True,
                        help="checkpoint file, or a run directory (its latest checkpoint.pth is used)")
    parser.add_argument("--curriculum", default=None,
                        help="name of the curriculum the checkpoint was trained with (e.g. FFHQ). Optional: "
                             "the checkpoint carries its own curriculum, which is what is used; when given, "
                             "it is checked to agree with the checkpoint's")
    parser.add_argument("--no_ema", action="store_true",
                        help="use the raw generator weights instead of the EMA weights")
    if psi is not None:
        parser.add_argument("--psi", type=finite_float, default=psi,
                            help=f"truncation: codes = mean + psi * (codes - mean); 1 disables it ({psi_note})")
    batch_help = "at most this many 3D points go through the SIREN at once; lower it if memory runs out"
    if max_batch_size is None:
        batch_help += " (default: the generator's own chunking)"
    parser.add_argument("--max_batch_size", type=int, default=max_batch_size, help=batch_help)
    parser.add_argument("--device", default=None,
                        help="torch device, e.g. cuda, cuda:1, cpu (default: cuda if available, else cpu)")
    add_threads_argument(parser)


def available_memory_bytes() -> Optional[int]:
    """MemAvailable from /proc/meminfo (Linux), else psutil when installed, else None (unknown)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # the file counts kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.virtual_memory().available)


def check_memory(needed: dict, device, what: str, advice: str, host_available: Optional[int] = None) -> None:
    """CLIError when `needed` bytes ({"host": ..., "device": ...}, either may be absent) exceed the memory
    available now (main memory, `host_available` if given; the GPU's free memory on CUDA): `what` needs
    ..., then `advice`."""
    available = {"host": available_memory_bytes() if host_available is None else host_available}
    if torch.device(device).type == "cuda" and "device" in needed:
        available["device"] = torch.cuda.mem_get_info(torch.device(device))[0]
    for where, free in available.items():
        if free is not None and needed.get(where, 0) > free:
            raise CLIError(f"{what} needs about {needed[where] / 2**30:.1f} GiB of "
                           f"{'GPU' if where == 'device' else 'main'} memory, {free / 2**30:.1f} GiB is available; "
                           f"{advice}")


def render_memory_bytes(model: "LoadedModel", options: RenderOptions, views: int) -> int:
    """A lower bound of the bytes rendering `views` views at once holds (float32): the field's outputs at
    every depth sample of the S x S rays (features, colour, density, the point and its depth), which
    the volume integral reads together, and the decoder's last activations and image at the output size."""
    size, samples = options.rays.img_size, options.rays.num_steps * (2 if options.hierarchical_sample else 1)
    features, last_channels = int(model.metadata["hidden_dim"]), int(model.metadata["decoder_channels"][-1])
    per_view = size * size * samples * (features + 8) + options.output_size ** 2 * (2 * last_channels + 3)
    return 4 * views * per_view


def prepare_output_dir(path, flag: str = "--output_dir") -> Path:
    """The output folder, created, after checking that a file can be written there: CLIError (one line,
    naming `flag`) when it cannot (a file, under a file, read-only, /proc), before any work is done."""
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        if isinstance(error, (FileExistsError, NotADirectoryError)):  # a file in the way: say which
            try:
                check_output_path(path, flag)
            except ValueError as named:
                raise CLIError(str(named)) from None
        raise CLIError(f"{flag} {path}: cannot write there ({describe_os_error(error)})") from None
    return folder


OVERWRITE_HELP = ("replace files of the same names already in --output_dir; without it a run that would replace a "
                  "file it did not write itself is refused before it starts (other files there are never touched)")


def add_overwrite_argument(parser: argparse.ArgumentParser, help: str = OVERWRITE_HELP) -> None:
    parser.add_argument("--overwrite", action="store_true", help=help)


def output_files(args, names: Sequence = ()) -> OutputFiles:
    """The files of --output_dir this run writes (`utils.run_dir.OutputFiles`, --overwrite), `names`, those
    known before the work, checked now: ExistingFile (run_cli: one `error:` line, exit 2) when one of them is
    already there. Reads the folder only: it is created by `prepare_output_dir`."""
    files = OutputFiles(args.output_dir, overwrite=args.overwrite)
    files.check(names)
    return files


def add_codes_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--codes", default=None,
                        help="a codes file written by invert.py (e.g. inv/codes.pth): render its fitted codes "
                             "(and its tuned generator, when it has one) instead of --seeds; files are named "
                             "after it. Needs the checkpoint the codes were fitted to as --path")
