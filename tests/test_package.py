import subprocess
import sys

import torch

from memlm.ops.utils import use_fla


def test_import_does_not_pull_in_triton_or_fla():
    code = "import sys, memlm; bad = [m for m in ('triton', 'fla') if m in sys.modules]; sys.exit(str(bad) * bool(bad))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_cpu_tensors_use_the_torch_path():
    assert not use_fla(torch.zeros(1), torch.zeros(1))
