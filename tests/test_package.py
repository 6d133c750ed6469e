import subprocess
import sys

import torch

from memlm.ops.utils import use_fla

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
