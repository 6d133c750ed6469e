"""The small module a memlm checkpoint carries, so that tools which never ``import memlm`` load it.

``config.json`` names the module in ``auto_map``, and ``save_pretrained`` writes it beside the weights. Then
``AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)`` (and stock lm-eval, vLLM's
transformers backend, or anything else built on the Auto classes) imports it, and it imports the installed
memlm package: the checkpoint carries no model code of its own, only these few lines.

The module's classes are subclasses of memlm's with the same names: transformers marks the classes it loads
this way for saving with their module (``register_for_auto_class``), and that must not change memlm's own
classes for the rest of the process.
"""

from __future__ import annotations

import os
from pathlib import Path

from memlm.files import atomic_write_text

AUTO_MODULE = "memlm_auto"
AUTO_MAP = {
    "AutoConfig": f"{AUTO_MODULE}.MemLMConfig",
    "AutoModel": f"{AUTO_MODULE}.MemLMModel",
    "AutoModelForCausalLM": f"{AUTO_MODULE}.MemLMForCausalLM",
}
AUTO_MODULE_SOURCE = '''"""A memlm checkpoint: its classes come from the installed memlm package (pip install memlm).

Loaded by transformers' Auto classes with trust_remote_code=True; written by memlm's save_pretrained.
"""

from memlm.models import configuration_memlm, modeling_memlm


class MemLMConfig(configuration_memlm.MemLMConfig):
    pass


class MemLMModel(modeling_memlm.MemLMModel):
    config_class = MemLMConfig


class MemLMForCausalLM(modeling_memlm.MemLMForCausalLM):
    config_class = MemLMConfig
'''


def write_auto_module(directory: str | os.PathLike) -> Path:
    """Write ``memlm_auto.py`` into ``directory`` (atomically: a reader never sees half a file)."""
    return atomic_write_text(Path(directory) / f"{AUTO_MODULE}.py", AUTO_MODULE_SOURCE)
