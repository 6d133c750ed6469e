"""Serving memlm models: the vLLM plugin (:mod:`memlm.serving.vllm`)."""
