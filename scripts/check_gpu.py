"""Check memlm on a CUDA GPU against its CPU path, and print a table (and JSON) of the errors found.

    python scripts/check_gpu.py --json gpu_check.json

* kernels: ``chunk_gated_delta_rule``, ``recurrent_gated_delta_rule``, ``chunk_gla``, ``recurrent_gla``,
  ``chunk_kda``, ``recurrent_kda``, ``chunk_ssd``, ``recurrent_ssd`` (Mamba-2; fla's simple-GLA kernels) on
  CUDA (flash-linear-attention's Triton kernels when ``fla`` is installed, memlm's torch path when not) in
  fp32 and bf16, batched with an initial state and packed with ``cu_seqlens``, T not a multiple of the
  chunk: outputs, final states and the gradients of every input against the CPU fp32 torch path;
* the Titans memory branch (``NeuralMemory``, depth 2) on CUDA against CPU: outputs and gradients;
* models with every layer type (GatedDeltaNet, HGRN-2, KDA, Mamba-2, GLA, DeltaNet, MLA, full and sliding
  attention, memory, MAG, MAC):
  CUDA logits against CPU logits in fp32, bf16 logits against fp32, and greedy ``generate`` with the
  cache against full recomputation, left-padded batch against each prompt alone.

An error is ``max |gpu - cpu| / max |cpu|`` over a tensor; a check passes under ``--tol-fp32`` (TF32 matrix
products may be on) or ``--tol-bf16``. Exit status 1 when a check fails. ``--device cpu`` runs the same
comparisons CPU against CPU (a smoke test of this script on a machine without a GPU).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F

from memlm import MemLMConfig, MemLMForCausalLM
from memlm.layers.neural_memory import NeuralMemory, memory_rule
from memlm.ops import (
    chunk_gated_delta_rule,
    chunk_gla,
    chunk_kda,
    chunk_ssd,
    recurrent_gated_delta_rule,
    recurrent_gla,
    recurrent_kda,
    recurrent_ssd,
)
from memlm.ops.common.fla import fla_gated_backward_is_broken

KERNELS = {"chunk_gated_delta_rule": chunk_gated_delta_rule, "recurrent_gated_delta_rule": recurrent_gated_delta_rule,
           "chunk_gla": chunk_gla, "recurrent_gla": recurrent_gla,
           "chunk_kda": chunk_kda, "recurrent_kda": recurrent_kda,
           "chunk_ssd": chunk_ssd, "recurrent_ssd": recurrent_ssd}
WITH_BETA = ("gated_delta_rule", "kda")  # the kernels that take a write strength beta
LINEAR = "linear_attention"
MODELS = {  # name: (layer_types, linear_attn_type)
    "gdn-hybrid": ([LINEAR, LINEAR, LINEAR, "full_attention"], "gated_deltanet"),
    "gdn-sliding": ([LINEAR, "sliding_attention", LINEAR, "sliding_attention"], "gated_deltanet"),
    "hgrn2-hybrid": ([LINEAR, LINEAR, LINEAR, "full_attention"], "hgrn2"),
    "kda-mla": ([LINEAR, "mla", LINEAR, "mla"], "kda"),  # Kimi Linear's layers
    "mamba2-hybrid": ([LINEAR, LINEAR, LINEAR, "full_attention"], "mamba2"),
    "gla-hybrid": ([LINEAR, LINEAR, LINEAR, "full_attention"], "gla"),
    "deltanet-hybrid": ([LINEAR, LINEAR, LINEAR, "full_attention"], "deltanet"),
    "titans": (["memory", "sliding_attention", "memory_as_gate", "memory_as_context"], "gated_deltanet"),
}


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    want = want.detach().float().cpu()
    return ((got.detach().float().cpu() - want).abs().max() / want.abs().max().clamp_min(1e-12)).item()


def kernel_inputs(name: str, packed: bool, seed: int = 0) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """CPU fp32 inputs: q, k, v, g (and beta for the delta rules), initial state; cu_seqlens when packed. For the SSD
    scan: x, dt, A, B, C, D (two groups of heads), initial state."""
    gen = torch.Generator().manual_seed(seed)
    batch, length, heads, dk, dv = (1, 200, 2, 64, 64) if packed else (2, 200, 2, 64, 64)
    cu_seqlens = torch.tensor([0, 70, 131, 200]) if packed else None
    states = 3 if packed else batch
    q = torch.randn(batch, length, heads, dk, generator=gen)
    k = F.normalize(torch.randn(batch, length, heads, dk, generator=gen), dim=-1)
    v = torch.randn(batch, length, heads, dv, generator=gen)
    if "ssd" in name:
        heads = 4  # two groups of two heads sharing B and C
        x = torch.randn(batch, length, heads, dv, generator=gen)
        dt = F.softplus(torch.randn(batch, length, heads, generator=gen) - 1)
        bc = [torch.randn(batch, length, 2, dk, generator=gen) * dk ** -0.5 for _ in range(2)]
        tensors = [x, dt, -torch.rand(heads, generator=gen) - 0.5, *bc, torch.randn(heads, generator=gen)]
        return tensors + [torch.randn(states, heads, dk, dv, generator=gen) * 0.1], cu_seqlens
    if "gated_delta" in name:
        g = F.logsigmoid(torch.randn(batch, length, heads, generator=gen) + 2)
        beta = torch.rand(batch, length, heads, generator=gen)
        tensors = [q, k, v, g, beta]
    else:
        g = F.logsigmoid(torch.randn(batch, length, heads, dk, generator=gen) + 3)
        tensors = [q, k, v, g] + ([torch.rand(batch, length, heads, generator=gen)] if "kda" in name else [])
    return tensors + [torch.randn(states, heads, dk, dv, generator=gen) * 0.1], cu_seqlens


def kernel_outputs(op, tensors, cu_seqlens, device, dtype):
    """Outputs, final state and gradients (of a fixed random projection of both) of one kernel call."""
    leaves = [t.to(device=device, dtype=dtype if i < len(tensors) - 1 else torch.float32).clone().requires_grad_()
              for i, t in enumerate(tensors)]
    o, final = op(*leaves[:-1], initial_state=leaves[-1], output_final_state=True,
                  cu_seqlens=None if cu_seqlens is None else cu_seqlens.to(device))
    gen = torch.Generator().manual_seed(1)
    weights = [torch.randn(x.shape, generator=gen).to(device) for x in (o, final)]
    ((o.float() * weights[0]).sum() + (final * weights[1]).sum()).backward()
    return [o, final] + [x.grad for x in leaves]


def check_kernels(device: str, record) -> None:
    for name, op in KERNELS.items():
        inputs = (["x", "dt", "A", "B", "C", "D"] if name.endswith("ssd") else
                  ["q", "k", "v", "g"] + (["beta"] if name.endswith(WITH_BETA) else []))
        names = ["o", "final_state"] + [f"d{n}" for n in inputs] + ["dh0"]
        for packed in (False, True):
            tensors, cu_seqlens = kernel_inputs(name, packed)
            reference = kernel_outputs(op, tensors, cu_seqlens, "cpu", torch.float32)
            for dtype in (torch.float32, torch.bfloat16):
                label = f"{name} {'packed' if packed else 'batched'}"
                try:
                    got = kernel_outputs(op, tensors, cu_seqlens, device, dtype)
                except Exception as error:  # noqa: BLE001  (a crash is a failed check; the others still run)
                    record(label, dtype, {f"crashed: {type(error).__name__}: {str(error)[:160]}": float("inf")})
                    continue
                errors = {n: relative_error(a, b) for n, a, b in zip(names, got, reference, strict=True)}
                record(label, dtype, errors)


def check_memory_branch(device: str, record) -> None:
    torch.manual_seed(0)
    cpu = NeuralMemory(64, 2, chunk_size=16, rule=memory_rule("titans", {"depth": 2}))
    gpu = NeuralMemory(64, 2, chunk_size=16, rule=memory_rule("titans", {"depth": 2})).to(device)
    gpu.load_state_dict(cpu.state_dict())
    x = torch.randn(2, 100, 64)
    results = []
    for module, dev in ((cpu, "cpu"), (gpu, device)):
        inp = x.to(dev).detach().requires_grad_()
        y, _ = module(inp)
        y.square().mean().backward()
        results.append([y, inp.grad] + [p.grad for p in module.parameters()])
    names = ["y", "dx"] + [f"d{n}" for n, _ in cpu.named_parameters()]
    errors = {n: relative_error(a, b) for n, a, b in zip(names, results[1], results[0], strict=True)}
    record("NeuralMemory titans depth 2", torch.float32, errors)


def tiny_model(layer_types: list[str], linear_attn_type: str) -> MemLMForCausalLM:
    torch.manual_seed(0)
    config = MemLMConfig(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=len(layer_types),
                         num_attention_heads=4, layer_types=layer_types, linear_attn_type=linear_attn_type,
                         sliding_window=8, memory_chunk_size=8, num_persistent_memory_tokens=2)
    return MemLMForCausalLM(config).eval()


def greedy(model, prompts: list[list[int]], device: str, use_cache: bool) -> list[list[int]]:
    """Greedy 12 new tokens for a left-padded batch of prompts."""
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=0,
                         use_cache=use_cache)
    return out[:, width:].tolist()


def check_models(device: str, record) -> None:
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(1, 97, (2, 77), generator=gen)
    prompts = [torch.randint(1, 97, (n,), generator=gen).tolist() for n in (19, 33)]
    for name, layers in MODELS.items():
        cpu = tiny_model(*layers)
        want = cpu(ids).logits
        gpu = tiny_model(*layers).to(device)
        record(f"model {name} logits", torch.float32, {"logits": relative_error(gpu(ids.to(device)).logits, want)})
        bf16 = tiny_model(*layers).to(device=device, dtype=torch.bfloat16)
        record(f"model {name} logits", torch.bfloat16, {"logits": relative_error(bf16(ids.to(device)).logits, want)})
        cached = greedy(gpu, prompts, device, use_cache=True)
        alone = [greedy(gpu, [p], device, use_cache=True)[0] for p in prompts]
        full = greedy(gpu, prompts, device, use_cache=False)
        record(f"model {name} generate", torch.float32,
               {"cached != recomputed": float(cached != full), "batched != alone": float(cached != alone)})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--tol-fp32", type=float, default=1e-2)
    parser.add_argument("--tol-bf16", type=float, default=5e-2)
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA GPU here (use --device cpu for a smoke test)")
    backend = "memlm torch path"
    if args.device.startswith("cuda") and importlib.util.find_spec("fla"):
        import triton

        broken = fla_gated_backward_is_broken(torch.cuda.get_device_capability(), triton.__version__,
                                              importlib.util.find_spec("tilelang") is not None)
        backend = "fla (gated delta rule training: memlm torch path, fla #640)" if broken else "fla"
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(f"device {device_name}, torch {torch.__version__}, linear-attention kernels: {backend}", flush=True)
    rows = []

    def record(check: str, dtype: torch.dtype, errors: dict) -> None:
        tol = args.tol_bf16 if dtype == torch.bfloat16 else args.tol_fp32
        worst = max(errors, key=errors.get)
        passed = all(e <= tol for e in errors.values())
        rows.append({"check": check, "dtype": str(dtype).removeprefix("torch."), "worst": worst,
                     "error": errors[worst], "passed": passed, "errors": errors})
        print(f"{'ok  ' if passed else 'FAIL'} {check:44s} {rows[-1]['dtype']:9s} worst {worst} {errors[worst]:.2e}",
              flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps({"device": device_name, "backend": backend, "rows": rows}, indent=2))

    started = time.perf_counter()
    for check in (check_kernels, check_memory_branch, check_models):
        try:
            check(args.device, record)
        except Exception as error:  # noqa: BLE001  (a crash is a failed check; the others still run)
            rows.append({"check": check.__name__, "dtype": "-", "worst": "crashed", "error": float("inf"),
                         "passed": False, "errors": {}, "message": f"{type(error).__name__}: {error}"})
            print(f"FAIL {check.__name__} crashed: {type(error).__name__}: {error}", flush=True)
    failed = [r for r in rows if not r["passed"]]
    print(f"summary: {len(rows) - len(failed)}/{len(rows)} checks passed in {time.perf_counter() - started:.0f}s "
          f"on {device_name} ({backend})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
