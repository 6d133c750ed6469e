"""CoLa: test-time chains of layers (skip, repeat, reorder) of any Llama-style decoder."""

from memlm.cola.chain import chain, check_path, relabel

__all__ = ["chain", "check_path", "relabel"]
