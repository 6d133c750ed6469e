import subprocess
import sys

import pytest
import torch

from memlm.ops.common.fla import fla_gated_backward_is_broken, use_fla, use_fla_gated_chunk

LOADED = "sorted(m for m in sys.modules if m.split('.')[0] in ('triton', 'fla') and sys.modules[m] is not None)"


def loaded_gpu_modules(imports: str) -> str:
    code = f"import sys; {imports}; print({LOADED})"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout


def test_import_does_not_pull_in_triton_or_fla():
    # Whatever torch and transformers load by themselves, memlm adds no Triton or fla module.
    assert loaded_gpu_modules("import memlm") == loaded_gpu_modules("import torch, transformers")
    assert "fla" not in loaded_gpu_modules("import memlm")


def test_cpu_tensors_use_the_torch_path():
    assert not use_fla(torch.zeros(1), torch.zeros(1))
    x = torch.zeros(1, requires_grad=True)
    assert not use_fla_gated_chunk(x, x, x)


@pytest.mark.parametrize(("capability", "triton", "tilelang", "broken"), [
    ((9, 0), "3.6.0", False, True),  # H100/H200 with the Triton of torch 2.11: fla refuses the backward
    ((9, 0), "3.4.0", False, True),
    ((9, 0), "3.7.0+git1234", False, True),
    ((9, 0), "3.6.0", True, False),  # tilelang replaces the kernel
    ((9, 0), "3.7.1", False, False),
    ((9, 0), "3.3.1", False, False),
    ((8, 0), "3.6.0", False, False),  # A100
    ((10, 0), "3.6.0", False, False),  # Blackwell
])
def test_fla_gated_backward_guard_follows_fla(capability, triton, tilelang, broken):
    assert fla_gated_backward_is_broken(capability, triton, tilelang) is broken
