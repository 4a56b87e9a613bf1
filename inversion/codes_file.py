"""The fitted result of `invert.py` as one file: `save_codes`, `load_codes`, `weights_fingerprint`.

The file (`codes.pth`) holds tensors and plain values only, so it loads with
`torch.load(weights_only=True)`, and is written atomically with a checksum (utils.checkpoint):

| key | what |
|---|---|
| `kind`, `codes_format` | "mvcgan-inversion", 1 |
| `frequencies`, `phases`, `style` | the fitted LatentCodes, (1, 9H), (1, 9H), (1, 256) |
| `w` | (1, 256) in the "w" latent space, absent in the "codes" space |
| `yaw`, `pitch` | the fitted camera, radians |
| `latent_space`, `loss`, `image_size`, `output_size`, `num_steps` | how it was fitted |
| `checkpoint`, `step`, `use_ema`, `fingerprint` | the weights it was fitted to (a SHA-256 of the generator's state dict) |
| `generator` | the tuned generator's state dict, only after `--tune_generator` |

`load_codes(path, generator)` checks the file against the generator it is to be rendered with
(same weights, or the tuned weights it carries) and returns the codes and the generator to use.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import NamedTuple, Optional

import torch

from generators.generators import ImplicitGenerator3d, LatentCodes
from utils.checkpoint import (CheckpointError, first_nonfinite, require_safe_torch, save_checkpoint, state_checksum,
                              verify_checksum, why_unreadable)
from utils.cli import CLIError, input_file

KIND = "mvcgan-inversion"
AGAIN = "; run invert.py again to write it anew"  # the advice for a damaged codes file
CODES_FORMAT = 1


def weights_fingerprint(generator: ImplicitGenerator3d) -> str:
    """SHA-256 of the generator's state dict: names the exact weights the codes were fitted to."""
    return state_checksum({"generator": generator.state_dict()})["digest"]


def save_codes(path, codes: LatentCodes, yaw: float, pitch: float, *, base_generator: ImplicitGenerator3d,
               tuned_generator: Optional[ImplicitGenerator3d] = None, w: Optional[torch.Tensor] = None,
               **info) -> Path:
    """Write the fitted codes, camera and (when tuned) generator; `info` adds plain values
    (latent_space, loss, checkpoint, step, use_ema, sizes)."""
    state = {"kind": KIND, "codes_format": CODES_FORMAT,
             **{name: tensor.detach().cpu() for name, tensor in codes._asdict().items()},
             "yaw": float(yaw), "pitch": float(pitch), "fingerprint": weights_fingerprint(base_generator), **info}
    if w is not None:
        state["w"] = w.detach().cpu()
    if tuned_generator is not None:
        state["generator"] = {k: v.detach().cpu() for k, v in tuned_generator.state_dict().items()}
    # save_checkpoint: a temp file and an atomic rename, and a checksum that load_codes verifies.
    save_checkpoint(path, state)
    return Path(path)


class LoadedCodes(NamedTuple):
    codes: LatentCodes             # (1, ...) each, on the generator's device
    generator: ImplicitGenerator3d  # the tuned copy when the file carries one, else the given generator
    yaw: float
    pitch: float
    info: dict                     # everything else in the file (no tensors)


def read_codes_file(path) -> dict:
    """The file's dict, checksum verified; CLIError for anything that is not a codes file."""
    path = input_file(path, "--codes")
    try:
        require_safe_torch()
    except CheckpointError as error:
        raise CLIError(str(error)) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # not a torch file, truncated, pickled objects: in words, never torch's advice
        _, reason = why_unreadable(path, error)
        raise CLIError(f"--codes {path} is not a codes file written by invert.py ({reason})") from None
    if not isinstance(state, dict) or state.get("kind") != KIND:
        raise CLIError(f"--codes {path} is not a codes file written by invert.py"
                       + (" (it is a checkpoint: pass it as --path)" if isinstance(state, dict)
                          and "curriculum" in state else ""))
    if int(state.get("codes_format", 0)) > CODES_FORMAT:
        raise CLIError(f"--codes {path} has format {state['codes_format']}, newer than this code understands "
                       f"({CODES_FORMAT})")
    try:
        verify_checksum(state, path, advice=AGAIN)
    except Exception as error:
        raise CLIError(f"--codes {error}") from None
    bad = first_nonfinite({**state, **state.get("generator", {})})
    if bad is not None:
        raise CLIError(f"--codes {path}: its {bad} holds NaN or infinite values{AGAIN}")
    return state


def load_codes(path, generator: ImplicitGenerator3d) -> LoadedCodes:
    """The codes of `path` for `generator` (the weights they were fitted to); CLIError when the
    file does not fit: other weights (another checkpoint, or raw instead of EMA) or other widths."""
    state = read_codes_file(path)
    output_layer = generator.siren.mapping_network.output_layer
    expected = output_layer.out_features // 2
    if state["frequencies"].shape[-1] != expected or state["style"].shape[-1] != output_layer.in_features:
        raise CLIError(f"--codes {path} was fitted to a generator of another width (hidden_dim "
                       f"{state['frequencies'].shape[-1] // 9}, this checkpoint's is {expected // 9})")
    if state["fingerprint"] != weights_fingerprint(generator):
        weights = "EMA" if state.get("use_ema", True) else "raw (--no_ema)"
        raise CLIError(f"--codes {path} was fitted to other weights: {state.get('checkpoint', 'another checkpoint')} "
                       f"(step {state.get('step', '?')}, {weights} weights); render it with that checkpoint")
    device = next(generator.parameters()).device
    result_generator = generator
    if "generator" in state:
        result_generator = copy.deepcopy(generator)
        result_generator.load_state_dict(state["generator"])
        result_generator.eval()
    codes = LatentCodes(*(state[name].to(device) for name in LatentCodes._fields))
    info = {k: v for k, v in state.items() if not isinstance(v, (torch.Tensor, dict))}
    return LoadedCodes(codes, result_generator, float(state["yaw"]), float(state["pitch"]), info)
