"""Benchmark memlm against named baselines, in one process, on one device.

The run recorded in ``docs/results/benchmarks/benchmarks.md`` (a second one there adds ``--threads 1``)::

    python scripts/bench_ops.py --json /tmp/bench.json

Smoke run (small sizes, well under a minute on 2 CPU cores)::

    python scripts/bench_ops.py --quick

Every timing is the median of ``--repeats`` timed runs after one untimed warm-up run (exceptions are
printed under the table they concern), measured with ``time.perf_counter`` and, on CUDA, with
``torch.cuda.synchronize()`` before and after. The timed runs of memlm and its baseline alternate
(a, b, a, b, ...), so that load from other processes on a shared machine hits both alike; the header
prints the load average, and a busy machine inflates every absolute number (see docs/results/benchmarks/benchmarks.md).
Inputs are seeded; everything is fp32.

Sections:

1. Op. ``memlm.ops.chunk_gated_delta_rule`` against transformers' PyTorch path
   ``torch_chunk_gated_delta_rule`` (``transformers.models.qwen3_next.modeling_qwen3_next``; the
   undecorated torch function, so no hub/fla kernel is picked on any device), forward + backward of
   ``o.sum()``. B=1, H=4, dk=dv=128, chunk 64 for both; q, k L2-normalized random, v random,
   ``g = logsigmoid(randn)``, ``beta = rand``; transformers is called with ``use_qk_l2norm_in_kernel=False``.
   Speed-up = transformers ms / memlm ms (> 1: memlm is faster). Once per T the outputs and the input
   gradients of both are compared (max abs difference) so both compute the same thing.
   transformers' backward at T=16384 takes ~15 s per call on 2 CPU cores, so there it gets one timed
   run and no warm-up (its warm-ups at smaller T already ran in this process).
2. Layer. Every linear mixer of ``LAYER_MIXERS`` (GatedDeltaNet, GLA, DeltaNet, and KDA / Mamba-2 where
   registered), built by ``memlm.layers.build_mixer`` as layer 0 of a config whose ``mixer_types`` is
   ``[mixer, "full_attention"]`` (projections, short convs, gates, the op, norms, output projection), against
   ``memlm.layers.Attention`` (layer 1) with ``_attn_implementation="sdpa"`` and no mask, which runs
   ``F.scaled_dot_product_attention(q, k, v, is_causal=True)`` with RoPE and its q/k/v/o projections. All read
   the same ``MixerInputs`` (no mask, no cache). hidden 512, 4 heads of 128 (4 kv heads), B=1, forward +
   backward of ``y.sum()`` including the parameter gradients, every mixer and SDPA timed alternately. Ratio =
   mixer ms / SDPA ms (< 1: the mixer is faster). Target: GDN faster than causal SDPA at T >= 8192.
3. Decoding. Per-token latency and cache size of a 3:1 hybrid (6 GatedDeltaNet + 2 attention layers)
   against an all-attention model (8 attention layers), both ``MemLMForCausalLM`` with hidden 512,
   8 layers, 4 heads of 128, 4 kv heads, vocab 32000. The cache is not prefilled through the model:
   an 8-token prompt initializes every layer's cache, then each attention layer's keys/values are
   replaced by random ``[1, 4, ctx, 128]`` tensors so that ``cache.get_seq_length() == ctx``. Then
   single-token steps (no attention mask, explicit ``position_ids``) are timed: median over
   ``--decode-steps`` steps after 2 warm-up steps, the cache growing by one token per step. Cache bytes
   = sum of ``numel * element_size`` over all tensors the cache holds right after the fill (keys and
   values; conv and recurrent states). Target: hybrid cache at 32k <= 30% of all-attention.
4. Pretrained. A Qwen3.5 of Qwen/Qwen3.5-0.8B's widths (hidden 1024, 8 attention heads of 256 with 2 kv heads,
   16 GatedDeltaNet key/value heads of 128, MLP 3584) but 4 layers (3 GatedDeltaNet + 1 attention) and a
   32000-token vocabulary, built with random weights by transformers' ``Qwen3_5ForCausalLM`` (its torch path:
   no fla installed), saved, and converted by ``memlm.convert.from_pretrained``; both run the same input, sdpa
   attention. Training: forward + backward of the next-token loss on ``[1, T]`` (tokens/s = T / median time).
   Generation: ``generate`` of 32 greedy tokens (``min_new_tokens`` 32) from a ``[1, T]`` prompt, prefill and
   decode, ms in total. Ratio = transformers time / memlm time (> 1: memlm is faster). The logits of both
   are compared once (max abs difference relative to the logits' largest magnitude).
5. More ops. The ops that have a transformers torch path, forward + backward of ``o.sum()`` at B=1 (the
   agreement of outputs and input gradients is printed as in section 1): KDA, ``memlm.ops.chunk_kda`` against
   ``chunk_kimi_delta_attention`` (``transformers.models.kimi_linear``), H=4, dk=dv=128, ``g = logsigmoid(randn
   + 3)`` per key channel, q/k L2-normalized in the kernel by both; Mamba-2's SSD scan, ``memlm.ops.chunk_ssd``
   (chunk 64, ``dt = softplus(dt_raw + dt_bias)``) against ``mamba2_chunk_scan`` (``transformers.models.mamba2``,
   the scan ``Mamba2Mixer``'s torch path calls, chunk 256 as in the released configs, ``dt_softplus=True``),
   H=32 heads of 64, d_state 128, one group. Speed-up = transformers ms / memlm ms. Target: 2x at T=4096.
6. Generation throughput. Section 4's pair (a converted Qwen3.5 in memlm and transformers' ``Qwen3_5ForCausalLM``,
   torch path, sdpa) runs greedy ``generate`` of ``--new-tokens`` tokens (``min_new_tokens`` the same; default 32)
   from B equal-length random prompts (no padding; generate's attention mask is all ones) at B = 1 (512, 2k, 8k
   prompt tokens) and B = 8 (512, 2k). A stopping criterion that never stops records when each token is ready, so
   each call gives the time to the first token (prefill) and the decoding steps after it: decode tok/s = B x (new
   tokens - 1) / (last token time - first token time), tok/s = B x new tokens / the whole call. One warm-up call at
   the first size only (the larger prompts run in a warm process). Ratios = memlm / transformers (> 1: memlm
   faster). Target: memlm at least as fast at every batch and prompt length.

Scaling (``--scaling``, not in the default run; ``python scripts/bench_ops.py --scaling --threads 1``): the cost
per token of every chunked op (GDN as section 1, GLA and KDA on section 5's KDA inputs, SSD as section 5, Based and
prefix linear attention with 4 heads of feature dimension 16 and values of 128, Titans' memory with 4 heads of 64)
and of section 2's GDN layer and causal SDPA layer, forward (no grad) and forward + backward, at T = 1k-64k
(``--scaling-sizes``), each op (and the two layers) at each length in ``--scaling-processes`` fresh processes (default
3; the median of their medians is reported: the cost of one op varies by up to 7% between processes of one program,
with the memory layout, much more than between runs in one process), which inherit the environment (the allocator
settings, glibc's ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_``, PyTorch's ``THP_MEM_ALLOC_ENABLE`` and any
``LD_PRELOAD``, see docs/results/benchmarks/benchmarks.md, are printed under the table); on CPU the timer is
the process's CPU time (``time.process_time``), which leaves out the time other processes hold the core. A run's
outputs and gradients are freed before the next run, as in a training loop. The 64k / 4k ratio per row
(target <= 1.15), the GFLOP/s at 4k (FLOPs counted by ``torch.utils.flop_counter``) against the fp32 matmul peak
measured in the same run, and the peak memory (``VmHWM``, a fresh process per T; on CUDA ``max_memory_allocated``)
of one training step of a tiny model with gradient checkpointing at 4k, 16k and 64k tokens.
"""

from __future__ import annotations

import argparse
import gc
import inspect
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import transformers
from tqdm import tqdm
from transformers import Qwen3_5ForCausalLM, Qwen3_5TextConfig, StoppingCriteria, StoppingCriteriaList
from transformers.models.mamba2.modeling_mamba2 import mamba2_chunk_scan
from transformers.models.qwen3_next.modeling_qwen3_next import torch_chunk_gated_delta_rule

import memlm
from memlm import MemLMConfig, MemLMForCausalLM
from memlm.convert import from_pretrained
from memlm.layers import MIXERS, Attention, build_mixer
from memlm.layers.inputs import MixerInputs
from memlm.layers.rotary import RotaryEmbedding
from memlm.ops import chunk_based, chunk_gated_delta_rule, chunk_gla, chunk_kda, chunk_neural_memory, chunk_ssd
from memlm.ops.common.fla import use_fla
from memlm.ops.neural_memory import PRESETS
from memlm.ops.neural_memory import initial_state as memory_initial_state
from memlm.ops.prefix_linear_attention import chunk_prefix_linear_attention, prefix_token_mask

try:  # Kimi Linear is in transformers' newer 5.x releases only (not 5.16)
    from transformers.models.kimi_linear.modeling_kimi_linear import chunk_kimi_delta_attention
except ImportError:
    chunk_kimi_delta_attention = None

# transformers' pure-PyTorch chunked gated delta rule, without the hub-kernel / fla dispatch wrapper.
transformers_chunk_gated_delta_rule = inspect.unwrap(torch_chunk_gated_delta_rule)

FULL_SIZES = {"op": [1024, 4096, 16384], "layer": [1024, 4096, 8192, 16384], "decode": [1024, 8192, 32768],
              "pretrained": [512, 2048], "ops": [4096],
              "generate": [(1, 512), (1, 2048), (1, 8192), (8, 512), (8, 2048)]}  # (batch, prompt tokens)
QUICK_SIZES = {"op": [256, 512], "layer": [256, 512], "decode": [256, 512], "pretrained": [64], "ops": [512],
               "generate": [(1, 64), (8, 64)]}
BASELINE_SINGLE_RUN_T = 16384  # op section: transformers gets 1 timed run, no warm-up, at T >= this
HEADS, HEAD_DIM, HIDDEN = 4, 128, 512
CHUNK = 64
DECODE_WARMUP = 2


# ----------------------------------------------------------------------------------------------- timing


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timing:
    times_ms: list[float]
    warmup: int
    result: object = None

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times_ms)


def measure(cases: dict[str, tuple[Callable[[], object], int, int]], device: torch.device,
            clock: Callable[[], float] = time.perf_counter) -> dict[str, Timing]:
    """Time several cases, ``name -> (fn, repeats, warmup)``, interleaved.

    Every case first runs its ``warmup`` untimed calls; then the timed calls go round-robin (a, b, a, b,
    ...) so that background load on a shared machine hits the compared cases alike. The last result
    of each case is kept (for the agreement checks).
    """
    results: dict[str, object] = dict.fromkeys(cases)
    for name, (fn, _, warmup) in cases.items():
        for _ in range(warmup):
            results[name] = fn()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for round_ in range(max(repeats for _, repeats, _ in cases.values())):
        for name, (fn, repeats, _) in cases.items():
            if round_ >= repeats:
                continue
            synchronize(device)
            start = clock()
            results[name] = fn()
            synchronize(device)
            times[name].append((clock() - start) * 1e3)
    return {name: Timing(times[name], cases[name][2], results[name]) for name in cases}


def format_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


def progress(total: int, desc: str) -> tqdm:
    return tqdm(total=total, desc=desc, leave=False, file=sys.stderr, dynamic_ncols=True)


# --------------------------------------------------------------------------------------------- 1. op


def op_inputs(seq_len: int, device: torch.device, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    shape = (1, seq_len, HEADS, HEAD_DIM)
    q = F.normalize(torch.randn(shape, generator=gen), dim=-1)
    k = F.normalize(torch.randn(shape, generator=gen), dim=-1)
    v = torch.randn(shape, generator=gen)
    g = F.logsigmoid(torch.randn(1, seq_len, HEADS, generator=gen))
    beta = torch.rand(1, seq_len, HEADS, generator=gen)
    return [x.to(device) for x in (q, k, v, g, beta)]


def op_step(op: Callable, inputs: list[torch.Tensor]) -> Callable[[], tuple[torch.Tensor, list[torch.Tensor]]]:
    """A closure running forward + backward of ``op(q, k, v, g, beta).sum()`` on fresh leaves."""
    leaves = [x.detach().clone().requires_grad_() for x in inputs]

    def step():
        for leaf in leaves:
            leaf.grad = None
        o = op(*leaves)
        o.sum().backward()
        return o.detach(), [leaf.grad for leaf in leaves]

    return step


def memlm_op(q, k, v, g, beta):
    return chunk_gated_delta_rule(q, k, v, g, beta, chunk_size=CHUNK)[0]


def transformers_op(q, k, v, g, beta):
    return transformers_chunk_gated_delta_rule(q, k, v, g, beta, chunk_size=CHUNK, use_qk_l2norm_in_kernel=False)[0]


def bench_op(sizes: list[int], device: torch.device, repeats: int) -> dict:
    rows, notes = [], []
    bar = progress(len(sizes), "op")
    for seq_len in sizes:
        inputs = op_inputs(seq_len, device)
        base_repeats, base_warmup = repeats, 1
        if seq_len >= BASELINE_SINGLE_RUN_T:
            base_repeats, base_warmup = 1, 0
            notes.append(f"transformers at T={seq_len}: 1 timed run, no warm-up (one call takes ~15 s on CPU)")
        timed = measure({"memlm": (op_step(memlm_op, inputs), repeats, 1),
                         "transformers": (op_step(transformers_op, inputs), base_repeats, base_warmup)}, device)
        ours, base = timed["memlm"], timed["transformers"]
        (o_ours, g_ours), (o_base, g_base) = ours.result, base.result
        rows.append({
            "T": seq_len,
            "memlm_ms": ours.median_ms, "memlm_times_ms": ours.times_ms, "memlm_warmup": ours.warmup,
            "transformers_ms": base.median_ms, "transformers_times_ms": base.times_ms,
            "transformers_warmup": base.warmup,
            "speedup": base.median_ms / ours.median_ms,
            "max_abs_diff_o": (o_ours - o_base).abs().max().item(),
            "max_abs_diff_grad": max((a - b).abs().max().item() for a, b in zip(g_ours, g_base, strict=True)),
        })
        del inputs, timed, ours, base, o_ours, g_ours, o_base, g_base
        gc.collect()
        bar.update()
    bar.close()
    table = format_table(
        ["T", "memlm ms", "transformers ms", "speed-up", "max|do|", "max|dgrad|"],
        [[str(r["T"]), f"{r['memlm_ms']:.1f}", f"{r['transformers_ms']:.1f}", f"{r['speedup']:.2f}x",
          f"{r['max_abs_diff_o']:.1e}", f"{r['max_abs_diff_grad']:.1e}"] for r in rows],
    )
    return {"rows": rows, "notes": notes, "table": table}


# ------------------------------------------------------------------------------------------ 2. layer


LAYER_MIXERS = ("gated_deltanet", "gla", "deltanet", "kda", "mamba2")


def layer_config(mixer: str) -> MemLMConfig:
    config = MemLMConfig(
        hidden_size=HIDDEN, num_hidden_layers=2, mixer_types=[mixer, "full_attention"],
        num_attention_heads=HEADS, num_key_value_heads=HEADS, head_dim=HEAD_DIM,
        linear_num_key_heads=HEADS, linear_key_head_dim=HEAD_DIM, linear_value_head_dim=HEAD_DIM,
    )
    config._attn_implementation = "sdpa"
    return config


def layer_step(module: torch.nn.Module, x: torch.Tensor, inputs: MixerInputs) -> Callable[[], None]:
    leaf = x.detach().clone().requires_grad_()

    def step():
        module.zero_grad(set_to_none=True)
        leaf.grad = None
        module(leaf, inputs).sum().backward()

    return step


def bench_layer(sizes: list[int], device: torch.device, repeats: int) -> dict:
    mixers = [name for name in LAYER_MIXERS if name in MIXERS]
    torch.manual_seed(0)
    modules = {name: build_mixer(layer_config(name), 0).to(device) for name in mixers}
    config = layer_config(mixers[0])
    modules["sdpa"] = Attention(config, 1).to(device)
    rotary = RotaryEmbedding(config).to(device)
    rows = []
    bar = progress(len(sizes), "layer")
    for seq_len in sizes:
        x = torch.randn(1, seq_len, HIDDEN, generator=torch.Generator().manual_seed(seq_len)).to(device)
        positions = torch.arange(seq_len, device=device)[None]
        inputs = MixerInputs(attention_mask=None, attention_masks={"full_attention": None}, position_ids=positions,
                             position_embeddings=rotary(x, positions))
        timed = measure({name: (layer_step(module, x, inputs), repeats, 1) for name, module in modules.items()},
                        device)
        sdpa_ms = timed["sdpa"].median_ms
        row = {"T": seq_len, "sdpa_ms": sdpa_ms, "sdpa_times_ms": timed["sdpa"].times_ms,
               "ms": {name: timed[name].median_ms for name in mixers},
               "times_ms": {name: timed[name].times_ms for name in mixers},
               "ratios": {name: timed[name].median_ms / sdpa_ms for name in mixers}}
        row["ratio"] = row["ratios"].get("gated_deltanet")
        rows.append(row)
        del x, inputs, timed
        gc.collect()
        bar.update()
    bar.close()
    table = format_table(
        ["T", "SDPA ms", *(f"{name} ms (ratio)" for name in mixers)],
        [[str(r["T"]), f"{r['sdpa_ms']:.1f}", *(f"{r['ms'][n]:.1f} ({r['ratios'][n]:.2f})" for n in mixers)]
         for r in rows],
    )
    return {"rows": rows, "notes": ["ratio = mixer ms / SDPA ms (< 1: the mixer is faster)"], "table": table,
            "params": {name: sum(p.numel() for p in module.parameters()) for name, module in modules.items()}}


# ----------------------------------------------------------------------------------------- 3. decode


def decode_model(hybrid_ratio: str, device: torch.device) -> MemLMForCausalLM:
    config = MemLMConfig(
        hybrid_ratio=hybrid_ratio, hidden_size=HIDDEN, num_hidden_layers=8, num_attention_heads=HEADS,
        num_key_value_heads=HEADS, head_dim=HEAD_DIM, linear_num_key_heads=HEADS, linear_key_head_dim=HEAD_DIM,
        linear_value_head_dim=HEAD_DIM, vocab_size=32000,
    )
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    return MemLMForCausalLM(config).to(device).eval()


def cache_bytes(cache: transformers.DynamicCache) -> int:
    """Bytes of every tensor held by the cache: keys/values, and conv/recurrent state dicts."""
    total = 0
    for layer in cache.layers:
        for name in ("keys", "values"):
            tensor = getattr(layer, name, None)
            if torch.is_tensor(tensor):
                total += tensor.numel() * tensor.element_size()
        for name in ("conv_states", "recurrent_states"):
            states = getattr(layer, name, None)
            if isinstance(states, dict):
                total += sum(t.numel() * t.element_size() for t in states.values() if torch.is_tensor(t))
    return total


@torch.no_grad()
def filled_cache(model: MemLMForCausalLM, context: int, device: torch.device) -> transformers.DynamicCache:
    """A cache holding ``context`` tokens: real states from an 8-token prompt, random attention keys/values."""
    config = model.config
    cache = transformers.DynamicCache(config=config)
    gen = torch.Generator().manual_seed(context)
    prompt = torch.randint(0, config.vocab_size, (1, 8), generator=gen).to(device)
    model(input_ids=prompt, cache=cache, use_cache=True)
    shape = (1, config.num_key_value_heads, context, config.head_dim)
    for layer_type, layer in zip(config.layer_types, cache.layers, strict=True):
        if layer_type != "linear_attention":
            layer.keys = torch.randn(shape, generator=gen).to(device)
            layer.values = torch.randn(shape, generator=gen).to(device)
    if cache.get_seq_length() != context:
        raise RuntimeError(f"cache holds {cache.get_seq_length()} tokens, expected {context}")
    return cache


def decode_step(model: MemLMForCausalLM, cache, context: int, steps: int, device: torch.device) -> Callable:
    """One single-token forward per call, at positions ``context, context + 1, ...``; the cache grows."""
    gen = torch.Generator().manual_seed(context + 1)
    tokens = iter(torch.randint(0, model.config.vocab_size, (DECODE_WARMUP + steps, 1, 1), generator=gen).to(device))
    positions = iter(range(context, context + DECODE_WARMUP + steps))

    @torch.no_grad()
    def step():
        model(input_ids=next(tokens), cache=cache, position_ids=torch.tensor([[next(positions)]], device=device),
              use_cache=True)

    return step


def bench_decode(contexts: list[int], device: torch.device, steps: int) -> dict:
    hybrid, full = decode_model("3:1", device), decode_model("0:1", device)
    rows = []
    bar = progress(len(contexts), "decode")
    for context in contexts:
        caches = {"hybrid": filled_cache(hybrid, context, device), "attention": filled_cache(full, context, device)}
        ours_bytes, base_bytes = cache_bytes(caches["hybrid"]), cache_bytes(caches["attention"])
        timed = measure({
            "hybrid": (decode_step(hybrid, caches["hybrid"], context, steps, device), steps, DECODE_WARMUP),
            "attention": (decode_step(full, caches["attention"], context, steps, device), steps, DECODE_WARMUP),
        }, device)
        ours, base = timed["hybrid"], timed["attention"]
        del caches, timed
        gc.collect()
        bar.update()
        rows.append({
            "context": context, "hybrid_ms": ours.median_ms, "hybrid_times_ms": ours.times_ms,
            "attention_ms": base.median_ms, "attention_times_ms": base.times_ms,
            "latency_ratio": ours.median_ms / base.median_ms,
            "hybrid_cache_bytes": ours_bytes, "attention_cache_bytes": base_bytes,
            "cache_ratio": ours_bytes / base_bytes,
        })
    bar.close()
    mb = 2**20
    table = format_table(
        ["context", "hybrid ms/token", "attention ms/token", "latency ratio", "hybrid cache MB",
         "attention cache MB", "cache ratio"],
        [[str(r["context"]), f"{r['hybrid_ms']:.1f}", f"{r['attention_ms']:.1f}", f"{r['latency_ratio']:.2f}",
          f"{r['hybrid_cache_bytes'] / mb:.1f}", f"{r['attention_cache_bytes'] / mb:.1f}",
          f"{r['cache_ratio']:.3f}"] for r in rows],
    )
    notes = [f"latency: median of {steps} single-token steps after {DECODE_WARMUP} warm-up steps, the two models "
             "stepping alternately; "
             "latency ratio and cache ratio are hybrid / attention; MB = 2**20 bytes"]
    return {"rows": rows, "notes": notes, "table": table, "layer_types": {
        "hybrid": hybrid.config.layer_types, "attention": full.config.layer_types}}


# ------------------------------------------------------------------------------------- 4. pretrained

# Qwen/Qwen3.5-0.8B's widths, with 4 of its 24 layers and a 32000-token vocabulary (its own is 248320)
QWEN3_5_WIDTHS = dict(
    hidden_size=1024, num_attention_heads=8, num_key_value_heads=2, head_dim=256, linear_num_key_heads=16,
    linear_num_value_heads=16, linear_key_head_dim=128, linear_value_head_dim=128, intermediate_size=3584,
    num_hidden_layers=4, vocab_size=32000,
)
GENERATED_TOKENS = 32


def converted_qwen3_5(device: torch.device) -> tuple[torch.nn.Module, MemLMForCausalLM]:
    """transformers' ``Qwen3_5ForCausalLM`` with random weights, and memlm's conversion of its saved checkpoint."""
    torch.manual_seed(0)
    reference = Qwen3_5ForCausalLM(Qwen3_5TextConfig(**QWEN3_5_WIDTHS, attn_implementation="sdpa"))
    with tempfile.TemporaryDirectory() as directory:
        reference.save_pretrained(directory)
        ours = from_pretrained(directory)
    ours.config._attn_implementation = "sdpa"
    return reference.to(device), ours.to(device)


def training_step(model: torch.nn.Module, ids: torch.Tensor) -> Callable[[], None]:
    def step():
        model.zero_grad(set_to_none=True)
        model(input_ids=ids, labels=ids).loss.backward()

    return step


def generation(model: torch.nn.Module, ids: torch.Tensor, new_tokens: int = GENERATED_TOKENS,
               **generate_kwargs) -> Callable[[], torch.Tensor]:
    """A closure running greedy ``generate`` of exactly ``new_tokens`` tokens after ``ids [B, T]``."""
    @torch.no_grad()
    def run():
        return model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                              **generate_kwargs)

    return run


def bench_pretrained(sizes: list[int], device: torch.device, repeats: int) -> dict:
    reference, ours = converted_qwen3_5(device)
    rows = []
    bar = progress(len(sizes), "pretrained")
    for seq_len in sizes:
        generator = torch.Generator().manual_seed(seq_len)
        ids = torch.randint(0, QWEN3_5_WIDTHS["vocab_size"], (1, seq_len), generator=generator).to(device)
        with torch.no_grad():
            ref_logits, our_logits = reference.eval()(ids).logits, ours.eval()(ids).logits
        difference = ((ref_logits - our_logits).abs().max() / ref_logits.abs().max()).item()
        reference.train(), ours.train()
        trained = measure({"memlm": (training_step(ours, ids), repeats, 1),
                           "transformers": (training_step(reference, ids), repeats, 1)}, device)
        reference.eval(), ours.eval()
        generated = measure({"memlm": (generation(ours, ids), repeats, 1),
                             "transformers": (generation(reference, ids), repeats, 1)}, device)
        same_tokens = torch.equal(generated["memlm"].result, generated["transformers"].result)
        bar.update()
        rows.append({
            "T": seq_len, "relative_logit_difference": difference, "same_generated_tokens": same_tokens,
            "train_memlm_ms": trained["memlm"].median_ms, "train_transformers_ms": trained["transformers"].median_ms,
            "train_memlm_tokens_per_s": seq_len / trained["memlm"].median_ms * 1e3,
            "train_transformers_tokens_per_s": seq_len / trained["transformers"].median_ms * 1e3,
            "train_ratio": trained["transformers"].median_ms / trained["memlm"].median_ms,
            "generate_memlm_ms": generated["memlm"].median_ms,
            "generate_transformers_ms": generated["transformers"].median_ms,
            "generate_ratio": generated["transformers"].median_ms / generated["memlm"].median_ms,
        })
    bar.close()
    table = format_table(
        ["T", "train tok/s memlm", "train tok/s transformers", "train ratio", "generate ms memlm",
         "generate ms transformers", "generate ratio", "logit diff", "same tokens"],
        [[str(r["T"]), f"{r['train_memlm_tokens_per_s']:.0f}", f"{r['train_transformers_tokens_per_s']:.0f}",
          f"{r['train_ratio']:.2f}", f"{r['generate_memlm_ms']:.0f}", f"{r['generate_transformers_ms']:.0f}",
          f"{r['generate_ratio']:.2f}", f"{r['relative_logit_difference']:.1e}", str(r["same_generated_tokens"])]
         for r in rows],
    )
    notes = [f"generate: a [1, T] prompt, {GENERATED_TOKENS} greedy tokens (prefill + decode); ratios are "
             "transformers / memlm (> 1: memlm faster); logit diff = max |difference| / max |logit|"]
    return {"rows": rows, "notes": notes, "table": table, "widths": QWEN3_5_WIDTHS}


# ---------------------------------------------------------------------------------------- 5. more ops


def kda_inputs(seq_len: int, device: torch.device) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seq_len)
    q, k, v = (torch.randn(1, seq_len, HEADS, HEAD_DIM, generator=gen) for _ in range(3))
    g = F.logsigmoid(torch.randn(1, seq_len, HEADS, HEAD_DIM, generator=gen) + 3)
    beta = torch.rand(1, seq_len, HEADS, generator=gen)
    return [t.to(device) for t in (q, k, v, g, beta)]


def memlm_kda(q, k, v, g, beta):
    return chunk_kda(q, k, v, g, beta, use_qk_l2norm_in_kernel=True)[0]


def transformers_kda(q, k, v, g, beta):
    return chunk_kimi_delta_attention(q, k, v, g, beta, use_qk_l2norm_in_kernel=True)[0]


SSD_HEADS, SSD_HEAD_DIM, SSD_STATE = 32, 64, 128


def ssd_inputs(seq_len: int, device: torch.device) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seq_len)
    x = torch.randn(1, seq_len, SSD_HEADS, SSD_HEAD_DIM, generator=gen)
    dt_raw = torch.randn(1, seq_len, SSD_HEADS, generator=gen)
    dt_bias = torch.rand(SSD_HEADS, generator=gen) - 4
    A = -torch.rand(SSD_HEADS, generator=gen).mul(15).add(1)
    B, C = (torch.randn(1, seq_len, 1, SSD_STATE, generator=gen) for _ in range(2))
    D = torch.randn(SSD_HEADS, generator=gen)
    return [t.to(device) for t in (x, dt_raw, dt_bias, A, B, C, D)]


def memlm_ssd(x, dt_raw, dt_bias, A, B, C, D):
    return chunk_ssd(x, F.softplus(dt_raw + dt_bias), A, B, C, D, chunk_size=64)[0]


def transformers_ssd(x, dt_raw, dt_bias, A, B, C, D):
    return mamba2_chunk_scan(x, dt_raw, A, B, C, chunk_size=256, D=D, dt_bias=dt_bias, dt_softplus=True)


MORE_OPS = {"kda": (kda_inputs, memlm_kda, transformers_kda), "ssd": (ssd_inputs, memlm_ssd, transformers_ssd)}


def bench_more_ops(sizes: list[int], device: torch.device, repeats: int) -> dict:
    rows = []
    bar = progress(len(sizes) * len(MORE_OPS), "more ops")
    notes = []
    for name, (make_inputs, ours_fn, base_fn) in MORE_OPS.items():
        if name == "kda" and chunk_kimi_delta_attention is None:
            notes.append(f"kda: not measured (transformers {transformers.__version__} has no Kimi Linear)")
            bar.update(len(sizes))
            continue
        for seq_len in sizes:
            inputs = make_inputs(seq_len, device)
            timed = measure({"memlm": (op_step(ours_fn, inputs), repeats, 1),
                             "transformers": (op_step(base_fn, inputs), repeats, 1)}, device)
            (o_ours, g_ours), (o_base, g_base) = timed["memlm"].result, timed["transformers"].result
            rows.append({
                "op": name, "T": seq_len, "memlm_ms": timed["memlm"].median_ms,
                "transformers_ms": timed["transformers"].median_ms,
                "speedup": timed["transformers"].median_ms / timed["memlm"].median_ms,
                "max_abs_diff_o": (o_ours - o_base).abs().max().item(),
                "max_abs_diff_grad": max((a - b).abs().max().item() for a, b in zip(g_ours, g_base, strict=True)),
            })
            del inputs, timed
            gc.collect()
            bar.update()
    bar.close()
    table = format_table(
        ["op", "T", "memlm ms", "transformers ms", "speed-up", "max|do|", "max|dgrad|"],
        [[r["op"], str(r["T"]), f"{r['memlm_ms']:.1f}", f"{r['transformers_ms']:.1f}", f"{r['speedup']:.2f}x",
          f"{r['max_abs_diff_o']:.1e}", f"{r['max_abs_diff_grad']:.1e}"] for r in rows],
    )
    return {"rows": rows, "notes": notes, "table": table}


# -------------------------------------------------------------------------------------------- scaling

SCALING_SIZES = [1024, 2048, 4096, 8192, 16384, 32768, 65536]
SCALING_QUICK_SIZES = [256, 512, 1024]
SCALING_SDPA_MAX_T = 16384  # causal SDPA is quadratic: at 64k one fwd+bwd takes minutes on a CPU core
SCALING_MEMORY_SIZES = [4096, 16384, 65536]
SCALING_QUICK_MEMORY_SIZES = [512, 1024]
# the allocator settings long sequences need on a CPU (glibc's thresholds, PyTorch's huge pages; README: Training),
# and LD_PRELOAD, which shows a replaced allocator (tcmalloc measured worse: benchmarks.md, third run)
ALLOCATOR_SETTINGS = ("LD_PRELOAD", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "THP_MEM_ALLOC_ENABLE")
TITANS_HEAD_DIM = 64


def based_inputs(seq_len: int, device: torch.device) -> list[torch.Tensor]:
    """q, k of Based's small feature dimension (16), v of 128, 4 heads."""
    gen = torch.Generator().manual_seed(seq_len)
    q, k = (torch.randn(1, seq_len, HEADS, 16, generator=gen) / 2 for _ in range(2))
    return [t.to(device) for t in (q, k, torch.randn(1, seq_len, HEADS, HEAD_DIM, generator=gen))]


def memlm_prefix(q, k, v):
    """Prefix linear attention with the first half of the sequence as the prefix (its keys/values are k, v)."""
    mask = prefix_token_mask(q.shape[1] // 2, 1, q.shape[1], device=q.device)
    return chunk_prefix_linear_attention(q, k, v, k, v, mask)[0]


def titans_inputs(seq_len: int, device: torch.device) -> list[torch.Tensor]:
    """Titans' memory (depth-2 MLP, momentum), 4 heads of 64: q, k, v, theta, log(1 - alpha), log eta and the
    memory's two initial weight matrices ``[H, out, in]``."""
    gen = torch.Generator().manual_seed(seq_len)
    q, k, v = (F.normalize(torch.randn(1, seq_len, HEADS, TITANS_HEAD_DIM, generator=gen), dim=-1) for _ in range(3))
    theta = torch.sigmoid(torch.randn(1, seq_len, HEADS, generator=gen)) * PRESETS["titans"].max_lr
    # forgetting alpha ~ 1e-4: on random inputs a deep memory's writes scale with its weights, so forgetting decays it
    # geometrically; at the layer's initial alpha ~ 2.5e-3 it reaches subnormal floats (many times slower on x86)
    # after ~12k tokens, and at 64k this rate leaves it near 1e-10 of its start, still in normal floats
    log_a = F.logsigmoid(torch.randn(1, seq_len, HEADS, generator=gen) + 9)
    log_eta = F.logsigmoid(torch.randn(1, seq_len, HEADS, generator=gen) + 2)
    weights = [torch.randn(HEADS, *shape, generator=gen) / shape[1] ** 0.5
               for shape in PRESETS["titans"].shapes(TITANS_HEAD_DIM)]
    return [t.to(device) for t in (q, k, v, theta, log_a, log_eta, *weights)]


def memlm_titans(q, k, v, theta, log_a, log_eta, *weights):
    rule = PRESETS["titans"]
    state = memory_initial_state(list(weights), rule, q.shape[0])
    return chunk_neural_memory(q, k, v, theta, log_a, log_eta, state, rule, CHUNK)[0]


SCALING_OPS = {  # name -> (inputs(T, device), op returning the output), shapes as in sections 1 and 5
    "gated_delta_rule": (op_inputs, memlm_op),
    "gla": (kda_inputs, lambda q, k, v, g, beta: chunk_gla(q, k, v, g)[0]),
    "kda": (kda_inputs, memlm_kda),
    "ssd": (ssd_inputs, memlm_ssd),
    "based": (based_inputs, lambda q, k, v: chunk_based(q, k, v)[0]),
    "prefix_linear_attention": (based_inputs, memlm_prefix),
    "titans": (titans_inputs, memlm_titans),
}


def forward_only(op: Callable, inputs: list[torch.Tensor]) -> Callable[[], None]:
    @torch.no_grad()
    def step():
        op(*inputs)

    return step


def layer_forward(module: torch.nn.Module, x: torch.Tensor, inputs: MixerInputs) -> Callable[[], None]:
    @torch.no_grad()
    def step():
        module(x, inputs)

    return step


def counted_flops(fn: Callable[[], object]) -> int:
    """Floating-point operations of one call, as ``torch.utils.flop_counter`` counts them (matmuls, convolutions,
    attention; elementwise work is not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def matmul_peak_gflops(device: torch.device, clock: Callable[[], float], size: int = 2048, repeats: int = 5) -> float:
    """The machine's fp32 matmul rate: best of ``repeats`` ``[size, size] @ [size, size]`` products timed by
    ``clock``."""
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = clock()
        torch.matmul(a, b)
        synchronize(device)
        best = min(best, clock() - start)
    return 2 * size**3 / best / 1e9


def peak_rss_bytes() -> int:
    """This process's peak resident memory: ``VmHWM`` of ``/proc/self/status`` (Linux; a fresh count per process),
    else ``ru_maxrss``, which on Linux a child started by ``subprocess`` inherits from its parent's peak."""
    import resource

    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def scaling_clock(device: torch.device) -> Callable[[], float]:
    """The scaling section's timer: on CPU the process's CPU time (it leaves out the time other processes hold the
    cores), on CUDA wall time."""
    return time.process_time if device.type == "cpu" else time.perf_counter


def run_child(call: str, threads: int) -> dict:
    """Run ``bench_ops.<call>`` in a fresh Python process with ``threads`` threads (the environment, e.g. glibc's
    ``MALLOC_*`` settings, is inherited) and return the JSON object it prints last."""
    scripts = os.path.dirname(os.path.abspath(__file__))
    code = (f"import sys, torch; sys.path.insert(0, {scripts!r}); torch.set_num_threads({threads}); "
            f"import bench_ops; bench_ops.{call}")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"bench_ops.{call} failed in its subprocess:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def scaling_memory_child(seq_len: int, device_type: str) -> None:
    """Run in a subprocess: one training step (forward + backward of the next-token loss) of a tiny all-GatedDeltaNet
    model (4 layers, hidden 128, 2 heads of 64, vocab 256; no attention layer, whose time is quadratic) on
    ``[1, seq_len]`` tokens with gradient checkpointing; prints JSON with the process's peak resident memory before
    and after the step (:func:`peak_rss_bytes`), and on CUDA the peak of ``torch.cuda.max_memory_allocated``."""
    device = torch.device(device_type)
    config = MemLMConfig(hidden_size=128, num_hidden_layers=4, hybrid_ratio="1:0", num_attention_heads=2,
                         num_key_value_heads=2, head_dim=64, linear_num_key_heads=2, linear_key_head_dim=64,
                         linear_value_head_dim=64, intermediate_size=256, vocab_size=256)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = MemLMForCausalLM(config).to(device).train()
    model.gradient_checkpointing_enable()
    ids = torch.randint(0, 256, (1, seq_len), generator=torch.Generator().manual_seed(0)).to(device)
    before = peak_rss_bytes()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model(input_ids=ids, labels=ids).loss.backward()
    result = {"T": seq_len, "rss_before_bytes": before,
              "rss_peak_bytes": peak_rss_bytes()}
    if device.type == "cuda":
        result["cuda_peak_bytes"] = torch.cuda.max_memory_allocated(device)
    print(json.dumps(result))


def scaling_op_cases(name: str, seq_len: int, device: torch.device) -> dict[tuple[str, str], Callable[[], object]]:
    """Forward and forward + backward of one op of ``SCALING_OPS`` on its inputs of length ``seq_len``."""
    make_inputs, op = SCALING_OPS[name]
    inputs = make_inputs(seq_len, device)
    return {(name, "fwd"): forward_only(op, inputs), (name, "fwd+bwd"): op_step(op, inputs)}


def scaling_layer_cases(seq_len: int, device: torch.device) -> dict[tuple[str, str], Callable[[], None]]:
    """Forward and forward + backward of section 2's GatedDeltaNet layer and causal SDPA layer (the latter up to
    ``SCALING_SDPA_MAX_T``) on one ``[1, seq_len, HIDDEN]`` input; the same seeded weights at every length."""
    torch.manual_seed(0)
    config = layer_config("gated_deltanet")
    layers = {"gdn_layer": build_mixer(config, 0).to(device), "sdpa_layer": Attention(config, 1).to(device)}
    x = torch.randn(1, seq_len, HIDDEN, generator=torch.Generator().manual_seed(seq_len)).to(device)
    positions = torch.arange(seq_len, device=device)[None]
    inputs = MixerInputs(attention_mask=None, attention_masks={"full_attention": None}, position_ids=positions,
                         position_embeddings=RotaryEmbedding(config).to(device)(x, positions))
    cases = {}
    for name, module in layers.items():
        if name == "sdpa_layer" and seq_len > SCALING_SDPA_MAX_T:
            continue
        cases[(name, "fwd")] = layer_forward(module, x, inputs)
        cases[(name, "fwd+bwd")] = layer_step(module, x, inputs)
    return cases


def discard_result(fn: Callable[[], object]) -> Callable[[], None]:
    """``fn`` returning nothing, so that a run's outputs and gradients are freed before the next run starts, as in a
    training loop (kept alive, they fragment glibc's heap at 64k: Titans' forward + backward took 25% more CPU time)."""

    def run() -> None:
        fn()

    return run


def scaling_time_child(group: str, seq_len: int, device_type: str, repeats: int, count_flops: bool) -> None:
    """Run in a subprocess: time one group of cases (an op of ``SCALING_OPS``, or ``"layers"``) at one length, one
    warm-up run and ``repeats`` timed runs of each case, alternating; prints JSON with the median microseconds per
    token of each case (the process's CPU time on CPU, wall time on CUDA) and, if ``count_flops``, its FLOPs."""
    device = torch.device(device_type)
    cases = (scaling_layer_cases(seq_len, device) if group == "layers"
             else scaling_op_cases(group, seq_len, device))
    names = {case: " ".join(case) for case in cases}
    flops = {names[case]: counted_flops(fn) for case, fn in cases.items()} if count_flops else {}
    clock = scaling_clock(device)
    timed = measure({names[case]: (discard_result(fn), repeats, 1) for case, fn in cases.items()}, device,
                    clock=clock)
    print(json.dumps({"us_per_token": {name: t.median_ms * 1e3 / seq_len for name, t in timed.items()},
                      "flops": flops}))


def bench_scaling(sizes: list[int], memory_sizes: list[int], device: torch.device, repeats: int,
                  processes: int = 3, groups: list[str] | None = None) -> dict:
    """Per-token cost of every chunked op and the GatedDeltaNet layer (against causal SDPA, built as in section 2)
    at growing T, each op and length timed in ``processes`` fresh processes (in rounds over every op and length, so
    that a slow spell of the machine hits all lengths alike; the median of the processes' medians); the GFLOP/s of
    each at T = 4096 (or the largest size below) against the matmul peak measured here; the peak memory of a tiny
    model's training step with gradient checkpointing. ``groups``: the ops of ``SCALING_OPS`` and ``"layers"`` to
    time (default all)."""
    clock = scaling_clock(device)
    peak = matmul_peak_gflops(device, clock)
    threads = torch.get_num_threads()
    flop_t = max(t for t in sizes if t <= 4096)
    groups = groups or [*SCALING_OPS, "layers"]
    per_process: dict[str, dict[int, list[float]]] = {}  # case -> T -> one median per process
    flops: dict[str, int] = {}
    bar = progress(processes * len(sizes) * len(groups), "scaling")
    for round_ in range(processes):
        for seq_len in sizes:
            for group in groups:
                count = round_ == 0 and seq_len == flop_t
                child = run_child(f"scaling_time_child({group!r}, {seq_len}, {device.type!r}, {repeats}, {count})",
                                  threads)
                for name, cost in child["us_per_token"].items():
                    per_process.setdefault(name, {}).setdefault(seq_len, []).append(cost)
                flops.update(child["flops"])
                bar.update()
    bar.close()
    per_token = {name: {t: statistics.median(costs) for t, costs in by_t.items()} for name, by_t in per_process.items()}
    first, last = (4096 if 4096 in sizes else sizes[0]), sizes[-1]
    rows = []
    for key, costs in per_token.items():
        name, mode = key.split(" ")
        seconds = costs.get(flop_t, float("nan")) * flop_t / 1e6
        gflops = flops.get(key, 0) / seconds / 1e9
        ratio = costs[last] / costs[first] if last in costs and first in costs else None
        rows.append({"name": name, "mode": mode, "us_per_token": {str(t): c for t, c in costs.items()},
                     "us_per_token_per_process": {str(t): c for t, c in per_process[key].items()},
                     "ratio_last_first": ratio, "gflop": flops.get(key, 0) / 1e9,
                     "gflops_per_s": gflops, "fraction_of_peak": gflops / peak})
    memory = [run_child(f"scaling_memory_child({seq_len}, {device.type!r})", threads) for seq_len in memory_sizes]
    mb = 2**20
    table = format_table(
        ["op", "pass", *(f"T={t}" for t in sizes), f"{last}/{first}", f"GFLOP/s@{flop_t}", "of peak"],
        [[r["name"], r["mode"], *(fmt(r["us_per_token"].get(str(t)), ".1f") for t in sizes),
          fmt(r["ratio_last_first"], ".2f"), f"{r['gflops_per_s']:.1f}", f"{r['fraction_of_peak']:.0%}"]
         for r in rows],
    )
    memory_table = format_table(
        ["T", "RSS before step MB", "peak RSS MB", "step added MB", "KB/token", *(
            ["CUDA peak MB"] if device.type == "cuda" else [])],
        [[str(r["T"]), f"{r['rss_before_bytes'] / mb:.0f}", f"{r['rss_peak_bytes'] / mb:.0f}",
          f"{(r['rss_peak_bytes'] - r['rss_before_bytes']) / mb:.0f}",
          f"{(r['rss_peak_bytes'] - r['rss_before_bytes']) / r['T'] / 1024:.1f}",
          *([f"{r['cuda_peak_bytes'] / mb:.0f}"] if "cuda_peak_bytes" in r else [])] for r in memory],
    )
    timer = "CPU time of its process (time.process_time)" if device.type == "cpu" else "wall time"
    allocator = {name: os.environ[name] for name in ALLOCATOR_SETTINGS if name in os.environ}
    notes = [
        f"us/token: {timer} per token, median over {processes} fresh processes per op and length (rounds over every "
        f"op and length) of each process's median of {repeats} runs after 1 warm-up (its two passes alternating; the "
        "two layers' four)",
        f"allocator settings in the environment: {allocator or 'none (defaults)'}",
        f"fp32 matmul peak measured in this run: {peak:.1f} GFLOP/s ([2048, 2048] @ [2048, 2048], best of 5)",
        f"GFLOP/s: FLOPs counted by torch.utils.flop_counter at T={flop_t} (matmuls only) / that T's median time",
        f"sdpa_layer: not run above T={SCALING_SDPA_MAX_T} (quadratic)",
        f"peak memory (tiny all-GatedDeltaNet model, 4 layers, hidden 128, gradient checkpointing, one training "
        f"step on [1, T], a fresh process per T):\n{memory_table}",
    ]
    return {"rows": rows, "memory": memory, "peak_gflops": peak, "flop_T": flop_t, "allocator": allocator,
            "notes": notes, "table": table}


# ------------------------------------------------------------------------------------------ 6. generate


class StepClock(StoppingCriteria):
    """A stopping criterion that never stops: it records when each new token is ready (``generate`` calls it once per
    step, after the token is chosen), so one ``generate`` call gives the time to the first token (prefill) and the
    decoding steps after it."""

    def __init__(self, device: torch.device):
        self.device = device
        self.times: list[float] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        synchronize(self.device)
        self.times.append(time.perf_counter())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def clocked_generation(model: torch.nn.Module, ids: torch.Tensor, new_tokens: int, device: torch.device,
                       records: list[dict]) -> Callable[[], torch.Tensor]:
    """Section 4's :func:`generation` with a :class:`StepClock`: each call appends ``{"first_token_s", "decode_s"}``
    to ``records`` (prefill + first token; the ``new_tokens - 1`` steps after it) and returns the new tokens."""
    def run():
        clock = StepClock(device)
        start = time.perf_counter()
        out = generation(model, ids, new_tokens, stopping_criteria=StoppingCriteriaList([clock]))()
        records.append({"first_token_s": clock.times[0] - start, "decode_s": clock.times[-1] - clock.times[0]})
        return out[:, ids.shape[1]:]

    return run


def bench_generate(sizes: list[tuple[int, int]], device: torch.device, repeats: int, new_tokens: int) -> dict:
    reference, ours = converted_qwen3_5(device)
    reference.eval(), ours.eval()
    models = {"memlm": ours, "transformers": reference}
    rows = []
    bar = progress(len(sizes), "generate")
    for index, (batch, context) in enumerate(sizes):
        generator = torch.Generator().manual_seed(batch * context)
        ids = torch.randint(0, QWEN3_5_WIDTHS["vocab_size"], (batch, context), generator=generator).to(device)
        records: dict[str, list[dict]] = {name: [] for name in models}
        # one warm-up call at the first size only: later sizes run in a warm process (the 8k prompts take long)
        timed = measure({name: (clocked_generation(model, ids, new_tokens, device, records[name]), repeats,
                                1 if index == 0 else 0) for name, model in models.items()}, device)
        row = {"batch": batch, "context": context, "new_tokens": new_tokens,
               "same_generated_tokens": torch.equal(timed["memlm"].result, timed["transformers"].result)}
        for name in models:
            kept = records[name][-repeats:]  # the timed calls
            total_s, decode_s = timed[name].median_ms / 1e3, statistics.median(r["decode_s"] for r in kept)
            row[name] = {
                "total_ms": timed[name].median_ms, "total_times_ms": timed[name].times_ms,
                "first_token_ms": statistics.median(r["first_token_s"] for r in kept) * 1e3,
                "decode_ms_per_step": decode_s / (new_tokens - 1) * 1e3,
                "decode_tokens_per_s": batch * (new_tokens - 1) / decode_s,
                "tokens_per_s": batch * new_tokens / total_s,
            }
        row["decode_ratio"] = row["memlm"]["decode_tokens_per_s"] / row["transformers"]["decode_tokens_per_s"]
        row["total_ratio"] = row["memlm"]["tokens_per_s"] / row["transformers"]["tokens_per_s"]
        rows.append(row)
        del ids, timed
        gc.collect()
        bar.update()
    bar.close()
    table = format_table(
        ["B", "context", "1st token ms memlm", "1st token ms transformers", "decode tok/s memlm",
         "decode tok/s transformers", "decode ratio", "tok/s memlm", "tok/s transformers", "ratio", "same tokens"],
        [[str(r["batch"]), str(r["context"]), f"{r['memlm']['first_token_ms']:.0f}",
          f"{r['transformers']['first_token_ms']:.0f}", f"{r['memlm']['decode_tokens_per_s']:.1f}",
          f"{r['transformers']['decode_tokens_per_s']:.1f}", f"{r['decode_ratio']:.2f}",
          f"{r['memlm']['tokens_per_s']:.1f}", f"{r['transformers']['tokens_per_s']:.1f}", f"{r['total_ratio']:.2f}",
          str(r["same_generated_tokens"])] for r in rows],
    )
    notes = [f"generate: B equal-length random prompts of `context` tokens (no padding: no attention mask is passed, "
             f"so generate's mask is all ones), {new_tokens} greedy tokens (min_new_tokens = max_new_tokens); "
             "1st token = prefill + the first token; decode tok/s = B x (new tokens - 1) / the time from the first "
             "to the last token; tok/s = B x new tokens / the whole generate call; ratios are memlm / transformers "
             "(> 1: memlm faster)"]
    return {"rows": rows, "notes": notes, "table": table, "widths": QWEN3_5_WIDTHS}


# ------------------------------------------------------------------------------------------- driver


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_revision() -> str | None:
    """``<short commit>`` of the checkout holding this script, ``+dirty`` with uncommitted changes."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+dirty" if dirty else "")


def header(device: torch.device) -> dict:
    meta = {
        "torch": torch.__version__, "transformers": transformers.__version__, "memlm": memlm.__version__,
        "git": git_revision(),
        "python": platform.python_version(), "device": str(device), "device_name": device_name(device),
        "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "loadavg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        probe = torch.zeros(1, device=device)
        meta["memlm_op_uses_fla"] = use_fla(probe)
    return meta


def linear_in_length(rows: list[dict], short: int = 4096, long: int = 65536, bound: float = 1.15) -> bool | None:
    """Whether every chunked op of ``SCALING_OPS`` (not the layers) costs at most ``bound`` times per token at ``long``
    what it costs at ``short``, forward and forward + backward (issue 20's target); None when an op or either length
    was not timed."""
    ops = [r for r in rows if r["name"] in SCALING_OPS]
    costs = [(r["us_per_token"].get(str(short)), r["us_per_token"].get(str(long))) for r in ops]
    if {r["name"] for r in ops} != set(SCALING_OPS) or any(None in pair for pair in costs):
        return None
    return all(at_long <= bound * at_short for at_short, at_long in costs)


def headline(results: dict, key: str, value: str, at: int, section: str) -> float | None:
    for row in results.get(section, {}).get("rows", []):
        if row[key] == at:
            return row[value]
    return None


def fmt(x: float | None, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per case, median reported (default 3)")
    parser.add_argument("--decode-steps", type=int, default=None, help="timed decode steps (default 10, quick 5)")
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke run (< 60 s on 2 CPU cores)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--sections", nargs="+", choices=["op", "layer", "decode", "pretrained", "ops", "generate"],
                        default=["op", "layer", "decode", "pretrained", "ops", "generate"])
    parser.add_argument("--new-tokens", type=int, default=None,
                        help="tokens each generate call of the generate section makes (default 32, quick 8)")
    parser.add_argument("--scaling", action="store_true",
                        help="run only the scaling section (per-token cost 1k-64k, GFLOP/s, peak memory)")
    parser.add_argument("--scaling-sizes", type=int, nargs="+", metavar="T",
                        help="the scaling section's lengths (default 1k-64k, quick 256-1k)")
    parser.add_argument("--scaling-processes", type=int, default=None, metavar="N",
                        help="fresh processes per op and length in the scaling section, median reported "
                             "(default 3, quick 1)")
    parser.add_argument("--scaling-ops", nargs="+", metavar="NAME", choices=[*SCALING_OPS, "layers"],
                        help=f"the scaling section's ops ({', '.join(SCALING_OPS)}) and 'layers' (the GDN and SDPA "
                             "layers); default all")
    parser.add_argument("--json", metavar="PATH", help="also write every result and timing to this JSON file")
    args = parser.parse_args()
    if args.scaling:
        args.sections = ["scaling"]

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch.cuda.is_available() is False")
    sizes = QUICK_SIZES if args.quick else FULL_SIZES
    steps = args.decode_steps or (5 if args.quick else 10)
    new_tokens = args.new_tokens or (8 if args.quick else GENERATED_TOKENS)
    if new_tokens < 2:
        parser.error(f"--new-tokens {new_tokens}: the generate section needs at least 2 (a first token and a step)")
    if args.scaling_processes is not None and args.scaling_processes < 1:
        parser.error(f"--scaling-processes {args.scaling_processes}: at least 1 process per op and length")
    if args.scaling_sizes and (min(args.scaling_sizes) < 1 or min(args.scaling_sizes) > 4096):
        parser.error(f"--scaling-sizes {' '.join(map(str, args.scaling_sizes))}: positive lengths, at least one "
                     "of them <= 4096 (the length the GFLOP/s are counted at)")
    started = time.perf_counter()

    meta = header(device)
    meta.update(repeats=args.repeats, decode_steps=steps, new_tokens=new_tokens, quick=args.quick, argv=sys.argv)
    print(f"memlm {meta['memlm']} (git {meta['git']}) benchmark | torch {meta['torch']} | "
          f"transformers {meta['transformers']} | python {meta['python']}")
    print(f"device {meta['device']}: {meta['device_name']} | torch threads {meta['threads']} "
          f"(os.cpu_count {meta['cpu_count']}) | load average at start {meta['loadavg_start']}")
    if "memlm_op_uses_fla" in meta:
        print(f"memlm op dispatches to flash-linear-attention: {meta['memlm_op_uses_fla']}")
    print(f"fp32 | median of {args.repeats} timed runs after 1 warm-up unless noted, alternating with the baseline")
    load = meta["loadavg_start"]
    if load is not None and load[0] > 0.5 * (meta["cpu_count"] or 1):
        print(f"WARNING: 1-min load average {load[0]:.1f} on {meta['cpu_count']} CPUs: other processes compete "
              "for the cores; absolute timings are inflated and noisy")

    results: dict = {"meta": meta}
    sections = [
        ("op", "1. Op: chunk_gated_delta_rule fwd+bwd, B=1 H=4 dk=dv=128 chunk=64 "
               "(memlm vs transformers torch_chunk_gated_delta_rule)",
         lambda: bench_op(sizes["op"], device, args.repeats)),
        ("layer", "2. Layer: each linear mixer vs causal SDPA attention (memlm Attention, sdpa, is_causal), "
                  "fwd+bwd, hidden 512, 4 heads x 128, B=1",
         lambda: bench_layer(sizes["layer"], device, args.repeats)),
        ("decode", "3. Decoding: 3:1 hybrid vs all-attention MemLMForCausalLM, 8 layers, hidden 512, "
                   "4 heads x 128, vocab 32000, B=1",
         lambda: bench_decode(sizes["decode"], device, steps)),
        ("pretrained", "4. Pretrained: a converted Qwen3.5 (Qwen3.5-0.8B widths, 4 layers, vocab 32000) in memlm vs "
                       "transformers' Qwen3_5ForCausalLM, B=1",
         lambda: bench_pretrained(sizes["pretrained"], device, args.repeats)),
        ("ops", "5. More ops: KDA and Mamba-2's SSD scan fwd+bwd, B=1 (memlm vs transformers' torch paths)",
         lambda: bench_more_ops(sizes["ops"], device, args.repeats)),
        ("scaling", "Scaling with length: per-token cost of every chunked op and the GDN layer vs causal SDPA, "
                    "B=1, and peak memory of a tiny model's training step",
         lambda: bench_scaling(args.scaling_sizes or (SCALING_QUICK_SIZES if args.quick else SCALING_SIZES),
                               SCALING_QUICK_MEMORY_SIZES if args.quick else SCALING_MEMORY_SIZES, device,
                               args.repeats, args.scaling_processes or (1 if args.quick else 3), args.scaling_ops)),
        ("generate", "6. Generation throughput: a converted Qwen3.5 (section 4's) in memlm vs transformers' "
                     "Qwen3_5ForCausalLM, greedy generate, batch B",
         lambda: bench_generate(sizes["generate"], device, args.repeats, new_tokens)),
    ]
    for name, title, run in sections:
        if name not in args.sections:
            continue
        section_start = time.perf_counter()
        results[name] = run()
        results[name]["seconds"] = time.perf_counter() - section_start
        results[name]["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
        print(f"\n{title}\n{results[name]['table']}")
        for note in results[name]["notes"]:
            print(f"note: {note}")
        print(f"({results[name]['seconds']:.0f} s; load average after: {results[name]['loadavg_end']})")

    speedup_4096 = headline(results, "T", "speedup", 4096, "op")
    ratio_8192 = headline(results, "T", "ratio", 8192, "layer")
    ratio_16384 = headline(results, "T", "ratio", 16384, "layer")
    cache_32k = headline(results, "context", "cache_ratio", 32768, "decode")
    layer_rows = [r for r in results.get("layer", {}).get("rows", []) if r["T"] >= 8192]
    pretrained_rows = results.get("pretrained", {}).get("rows", [])
    generate_rows = results.get("generate", {}).get("rows", [])
    claims = {
        "gdn_faster_than_sdpa_at_T_ge_8192": all(r["ratio"] < 1 for r in layer_rows) if layer_rows else None,
        "hybrid_cache_at_32k_le_30pct": None if cache_32k is None else cache_32k <= 0.30,
        "converted_qwen3_5_at_least_as_fast": all(min(r["train_ratio"], r["generate_ratio"]) >= 1
                                                  for r in pretrained_rows) if pretrained_rows else None,
        "chunked_ops_linear_in_T": linear_in_length(results.get("scaling", {}).get("rows", [])),
        "generate_at_least_as_fast": all(min(r["decode_ratio"], r["total_ratio"]) >= 1
                                         for r in generate_rows) if generate_rows else None,
    }
    results["summary"] = {"op_speedup_T4096": speedup_4096, "layer_ratio_T8192": ratio_8192,
                          "layer_ratio_T16384": ratio_16384, "cache_ratio_32k": cache_32k, "claims": claims}
    meta["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    meta["seconds"] = time.perf_counter() - started

    def verdict(ok: bool | None) -> str:
        return "not measured" if ok is None else ("MET" if ok else "NOT MET")

    print(f"\nclaim 'GDN layer faster than causal SDPA at T >= 8192': "
          f"{verdict(claims['gdn_faster_than_sdpa_at_T_ge_8192'])}")
    print(f"claim '3:1 hybrid cache at 32k <= 30% of all-attention': {verdict(claims['hybrid_cache_at_32k_le_30pct'])}")
    print("claim 'converted Qwen3.5 trains and generates at least as fast in memlm as in transformers': "
          f"{verdict(claims['converted_qwen3_5_at_least_as_fast'])}")
    print("claim 'every chunked op's per-token cost (fwd and fwd+bwd) at T=65536 within 1.15x of T=4096': "
          f"{verdict(claims['chunked_ops_linear_in_T'])}")
    print("claim 'generate (decode tok/s and whole-call tok/s) at least as fast in memlm as transformers' Qwen3.5 at "
          f"every batch and prompt length': {verdict(claims['generate_at_least_as_fast'])}")
    print(f"SUMMARY: op speed-up vs transformers at T=4096 {fmt(speedup_4096, '.2f')} | "
          f"GDN/SDPA layer time at T=8192 {fmt(ratio_8192, '.2f')}, T=16384 {fmt(ratio_16384, '.2f')} | "
          f"hybrid/attention cache at 32k {fmt(cache_32k, '.3f')} | converted Qwen3.5 transformers/memlm time: "
          f"train {fmt(pretrained_rows[-1]['train_ratio'] if pretrained_rows else None, '.2f')}, generate "
          f"{fmt(pretrained_rows[-1]['generate_ratio'] if pretrained_rows else None, '.2f')}")
    print(f"total {meta['seconds']:.0f} s | load average at end {meta['loadavg_end']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
