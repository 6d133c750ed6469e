"""Tiny random checkpoints saved by transformers' own classes, the sources of the converter tests."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import (
    Qwen3_5Config,
    Qwen3_5ForCausalLM,
    Qwen3_5ForConditionalGeneration,
    Qwen3_5TextConfig,
    Qwen3NextConfig,
    Qwen3NextForCausalLM,
)

# Qwen3.5's layout at toy width: 3 GatedDeltaNet : 1 attention, GQA, 2 value heads per key head, partial RoPE,
# multimodal RoPE fields (text positions: plain RoPE).
QWEN_TEXT = dict(
    vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
    num_key_value_heads=2, head_dim=16, linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=8,
    linear_value_head_dim=8, initializer_range=0.1, pad_token_id=0, eos_token_id=1,
    rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25,
                     "mrope_section": [1, 1, 0], "mrope_interleaved": True},
)
TOKENIZER_FILES = {"tokenizer.json": '{"fake": "tokenizer"}', "tokenizer_config.json": '{"model_max_length": 64}'}


@torch.no_grad()
def randomize(model: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial norm weights (zero-centred ones included), decays and time steps: every vector parameter gets
    noise, so a missed ``1 + w`` or a swapped ``A_log`` shows in the logits."""
    for parameter in model.parameters():
        if parameter.ndim == 1:
            parameter.add_(torch.randn_like(parameter) * 0.3)
    return model.eval()


def save(model, directory: Path) -> Path:
    model.save_pretrained(directory)
    for name, text in TOKENIZER_FILES.items():
        (directory / name).write_text(text)
    return directory


def qwen3_5_text(directory: Path, **overrides) -> Path:
    torch.manual_seed(0)
    return save(randomize(Qwen3_5ForCausalLM(Qwen3_5TextConfig(**{**QWEN_TEXT, **overrides}))), directory)


def qwen3_5_vision_language(directory: Path, mtp: bool = False) -> Path:
    """A ``Qwen3_5ForConditionalGeneration`` (tensors ``model.language_model.*``, ``model.visual.*``), as the hub's
    Qwen/Qwen3.5-0.8B; with ``mtp``, also an MTP head's tensors (``mtp.*``) and ``mtp_num_hidden_layers=1``, which
    transformers' classes do not build (they ignore ``mtp.*`` on load)."""
    torch.manual_seed(0)
    vision = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=4,
                  temporal_patch_size=2, spatial_merge_size=2, num_position_embeddings=16)
    text = {**QWEN_TEXT, "mtp_num_hidden_layers": 1} if mtp else QWEN_TEXT
    model = Qwen3_5ForConditionalGeneration(Qwen3_5Config(text_config=text, vision_config=vision,
                                                          tie_word_embeddings=True))
    save(randomize(model), directory)
    if mtp:
        tensors = load_file(directory / "model.safetensors")
        tensors["mtp.fc.weight"] = torch.randn(64, 128)
        save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
    return directory


def qwen3_next(directory: Path, **overrides) -> Path:
    """Qwen3-Next with every layer dense (``mlp_only_layers``), the layers memlm converts."""
    torch.manual_seed(0)
    config = Qwen3NextConfig(**{**QWEN_TEXT, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
                                "shared_expert_intermediate_size": 32, "mlp_only_layers": [0, 1, 2, 3], **overrides})
    return save(randomize(Qwen3NextForCausalLM(config)), directory)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).abs().max() / expected.abs().max())


def assert_matches_transformers(model, reference, vocab_size: int) -> None:
    """A converted ``model`` against the source's transformers ``reference`` on a left-padded batch: fp32 logits of
    the real tokens within 1e-4 of their scale, 20 greedy tokens identical, every cached decoding step's logits
    (the first is the prefill) within 1e-4, and memlm's uncached generation the same tokens."""
    ids = torch.randint(2, vocab_size, (2, 11))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # left padding
    ids[1, :4] = 0
    with torch.no_grad():
        expected = reference(ids, attention_mask=mask).logits
        actual = model(ids, attention_mask=mask).logits
    real = mask.bool()
    assert relative_error(actual[real], expected[real]) < 1e-4
    generate = dict(attention_mask=mask, max_new_tokens=20, do_sample=False, pad_token_id=0,
                    return_dict_in_generate=True, output_logits=True)
    theirs = reference.generate(ids, **generate)
    ours = model.generate(ids, **generate)
    assert ours.sequences.shape[1] == ids.shape[1] + 20
    assert torch.equal(ours.sequences, theirs.sequences)
    for step, (mine, other) in enumerate(zip(ours.logits, theirs.logits, strict=True)):
        assert relative_error(mine, other) < 1e-4, step
    uncached = model.generate(ids, attention_mask=mask, max_new_tokens=20, do_sample=False, pad_token_id=0,
                              use_cache=False)
    assert torch.equal(uncached, ours.sequences)
