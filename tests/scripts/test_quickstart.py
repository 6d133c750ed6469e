import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "quickstart.py"


def test_quickstart_trains_saves_and_reloads(tmp_path):
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--steps", "3", "--batch-size", "4", "--eval-examples", "8",
         "--output-dir", str(tmp_path / "ckpt")],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "logits identical" in result.stdout
    assert (tmp_path / "ckpt" / "model.safetensors").exists()


def test_quickstart_rejects_bad_arguments():
    result = subprocess.run([sys.executable, str(SCRIPT), "--steps", "0"], capture_output=True, text=True)
    assert result.returncode != 0 and "--steps must be positive, got 0" in result.stderr
