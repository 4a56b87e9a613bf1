"""Tolerances for comparing two float32 evaluations of the same formula through different kernels.

Batching, chunking, thread counts and fused-versus-reference paths all add the same products in other
orders (another GEMM or convolution blocking), so their results agree to rounding, not bit for bit: on
an AMD EPYC the batched and the whole render of tests/test_inference.py differed by 1.6e-5 on values up
to 1.41, where our Intel machines gave 0 (issue 28). A test comparing such paths states its tolerance
with these functions; a test whose claim is bit-equality (a resume, the same computation repeated with
the same shapes) keeps torch.equal.

The arithmetic: a float32 sum of n terms computed in any order is within gamma_n * sum|terms| of the
exact sum, gamma_n = n*u / (1 - n*u), u = eps / 2 (Higham, Accuracy and Stability of Numerical
Algorithms, 2nd ed., section 3.1). Two orders therefore differ by at most about n * eps * sum|terms|.
"""
from __future__ import annotations

import torch

EPS32 = torch.finfo(torch.float32).eps  # 2**-23 = 1.19e-7: one float32 ulp at 1.0


def reordered_sum_atol(terms: int, abs_sum: float) -> float:
    """Largest difference between two float32 sums of `terms` terms, added in different orders, whose
    absolute values add up to `abs_sum`: terms * eps * abs_sum (the bound above, both ways)."""
    return terms * EPS32 * abs_sum


def longest_reduction(module: torch.nn.Module) -> int:
    """The most products any output of `module`'s linear and convolution layers sums: in_features for a
    Linear, in_channels * kh * kw for a Conv2d (a weight's size over its output dimension)."""
    return max(p.numel() // p.shape[0] for p in module.parameters() if p.dim() >= 2)


def network_atol(module: torch.nn.Module, output: torch.Tensor) -> float:
    """Tolerance for a whole network's float32 output computed through other kernels: the reordering bound
    of its longest reduction, with the output's largest magnitude in place of the sum of |terms|.

    An estimate rather than a proof (a deep network also carries earlier layers' rounding forward, and
    cancellation can make sum|terms| exceed |output|); it is 6x the largest difference measured across
    CPUs (issue 28: 1.6e-5 on 1.41 for the tiny generator, whose bound here is 9.7e-5)."""
    return reordered_sum_atol(longest_reduction(module), output.detach().abs().max().item())
