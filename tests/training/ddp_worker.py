"""Run a recipe under torchrun and save this rank's final parameters (for the data-parallel test)."""

import os
import sys

import torch

from memlm.training import load_config, train

if __name__ == "__main__":
    config_path, out_dir, *overrides = sys.argv[1:]
    result = train(load_config(config_path, overrides))
    rank = int(os.environ.get("RANK", 0))  # set by torchrun
    torch.save(result.model.state_dict(), f"{out_dir}/params_rank{rank}.pt")
