"""Train a recipe and kill this process (SIGKILL) in the middle of writing checkpoint ``step_<kill_step>``:
right after its model weights are written, before the rest (for the atomic-checkpoint test)."""

import os
import signal
import sys
from pathlib import Path

from memlm.training import checkpointing, load_config, train

if __name__ == "__main__":
    config_path, kill_step = sys.argv[1], int(sys.argv[2])
    write = checkpointing._save_tensors

    def write_then_die(path: Path, tensors) -> None:
        write(path, tensors)
        if Path(path).parent.name == f"step_{kill_step}{checkpointing.PARTIAL}":
            os.kill(os.getpid(), signal.SIGKILL)

    checkpointing._save_tensors = write_then_die
    train(load_config(config_path))
