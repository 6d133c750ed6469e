"""Dispatch to flash-linear-attention's Triton kernels where they can serve, and the check for the Triton
versions that miscompile fla's gated backward pass on Hopper (fla issue #640)."""

from __future__ import annotations

import functools

import torch


def use_fla(*tensors: torch.Tensor) -> bool:
    """True when the tensors are on CUDA and flash-linear-attention is installed (checked without importing it)."""
    if not all(t.is_cuda for t in tensors):
        return False
    import importlib.util

    return importlib.util.find_spec("fla") is not None


def fla_gated_backward_is_broken(capability: tuple[int, int], triton_version: str, has_tilelang: bool) -> bool:
    """Whether fla refuses the backward pass of its gated chunk kernels here: on Hopper GPUs (compute
    capability 9.x) Triton 3.4.0 to 3.7.0 miscompiles fla's gated ``chunk_bwd_dqkwg`` (fla issue #640), and fla
    raises a RuntimeError in the backward pass unless tilelang is installed to replace the kernel."""
    from packaging.version import Version

    version = Version(triton_version.split("+")[0])
    return capability[0] == 9 and Version("3.4.0") <= version < Version("3.7.1") and not has_tilelang


@functools.cache
def _fla_gated_backward_is_broken_on(device_index: int) -> bool:
    import importlib.util
    import warnings

    import triton

    broken = fla_gated_backward_is_broken(torch.cuda.get_device_capability(device_index), triton.__version__,
                                          importlib.util.find_spec("tilelang") is not None)
    if broken:
        warnings.warn(
            f"memlm: fla cannot train the gated delta rule on this GPU with Triton {triton.__version__} (fla issue "
            "#640: Hopper, Triton 3.4.0 to 3.7.0); memlm uses its own torch kernel when gradients are needed. "
            "Install Triton >= 3.7.1 or tilelang to train with fla's kernel.", stacklevel=3,
        )
    return broken


def needs_backward(*tensors: torch.Tensor | None) -> bool:
    """Whether autograd will differentiate through an op on these tensors (None entries, such as a missing
    initial state, are skipped)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def use_fla_gated_chunk(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *inputs: torch.Tensor | None) -> bool:
    """:func:`use_fla` for ``q, k, v``, except where a backward pass through them or ``inputs`` (gates, initial
    state) will be needed and fla refuses it on this GPU (:func:`fla_gated_backward_is_broken`); the forward
    pass alone (inference) always goes to fla."""
    if not use_fla(q, k, v):
        return False
    return not (needs_backward(q, k, v, *inputs) and _fla_gated_backward_is_broken_on(q.device.index or 0))
