"""RecurrentGPT-style text memory: durable long-term and short-term language memory that drives arbitrarily
long generation with any LLM backend (``memlm write`` on the command line)."""

from memlm.textmem.backends import (
    LLMBackend,
    OpenAIBackend,
    ScriptedBackend,
    TransformersBackend,
    VLLMBackend,
    backend_from_spec,
)
from memlm.textmem.embedder import SentenceTransformerEmbedder, default_embedder
from memlm.textmem.store import MemoryItem, StoreBusyError, TextMemory
from memlm.textmem.writer import RecurrentWriter, StepResult, WriterError, parse_sections

__all__ = [
    "LLMBackend", "MemoryItem", "OpenAIBackend", "RecurrentWriter", "ScriptedBackend", "SentenceTransformerEmbedder",
    "StepResult", "StoreBusyError", "TextMemory", "TransformersBackend", "VLLMBackend", "WriterError",
    "backend_from_spec", "default_embedder", "parse_sections",
]
