"""Dtype helpers for mixed precision that leave float64 alone.

Under fp16/bf16 autocast some sums (instance-norm statistics, losses, warp geometry) must run
in float32; a plain `.float()` would also round a float64 run (the step-parity test,
docs/METHOD.md §7) down to float32. `full_precision` upcasts only half types.
"""
from __future__ import annotations

import torch

HALF_DTYPES = (torch.float16, torch.bfloat16)


def full_precision(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` as float32 if it is a half type (fp16, bf16), else unchanged (float32, float64)."""
    return tensor.float() if tensor.dtype in HALF_DTYPES else tensor
