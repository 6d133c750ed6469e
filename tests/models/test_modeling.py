import pytest
import torch
import transformers
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, DynamicCache

import memlm
from memlm import MemLMConfig, MemLMForCausalLM

TRANSFORMERS_VERSION = tuple(int(x) for x in transformers.__version__.split(".")[:2])


def skip_where_transformers_generate_is_broken(model, left_padded=False):
    """Known limits of older transformers releases, documented in the README."""
    layer_types = model.config.layer_types
    if TRANSFORMERS_VERSION < (5, 24) and not {"full_attention", "sliding_attention"} & set(layer_types):
        pytest.skip("transformers < 5.24: generate asks a cache without attention layers for its length")
    if TRANSFORMERS_VERSION < (5, 23) and left_padded and "sliding_attention" in layer_types:
        pytest.skip("transformers < 5.23: left-padded generation with sliding-window layers differs")

VARIANTS = {
    "gdn-3:1": dict(linear_attn_type="gated_deltanet", hybrid_ratio="3:1"),
    "hgrn2-3:1": dict(linear_attn_type="hgrn2", hybrid_ratio="3:1"),
    "kda-3:1": dict(linear_attn_type="kda", hybrid_ratio="3:1", linear_num_value_heads=8, linear_value_head_dim=4),
    # Kimi Linear's layers: KDA and Multi-head Latent Attention (here with RoPE on its 4 rope channels, low-rank q)
    "kda-mla": dict(mixer_types=["kda", "mla"] * 2, head_dim=4, mla_qk_nope_head_dim=8, mla_v_head_dim=6,
                    mla_kv_lora_rank=12, mla_q_lora_rank=10),
    "based-3:1": dict(linear_attn_type="based", hybrid_ratio="3:1", linear_key_head_dim=8),
    "gla-3:1": dict(linear_attn_type="gla", hybrid_ratio="3:1", gla_gate_low_rank_dim=4),
    "deltanet-3:1": dict(linear_attn_type="deltanet", hybrid_ratio="3:1"),
    "mamba2-3:1": dict(linear_attn_type="mamba2", hybrid_ratio="3:1", mamba_head_dim=8, mamba_d_state=6,
                       mamba_n_groups=2),
    "gdn-all-linear": dict(hybrid_ratio="1:0"),
    "all-attention": dict(hybrid_ratio="0:1"),
    "gdn-gqa-sliding": dict(
        layer_types=["linear_attention", "sliding_attention", "linear_attention", "full_attention"],
        sliding_window=5, linear_num_key_heads=2, linear_num_value_heads=4, num_key_value_heads=2,
    ),
    # Titans / Miras memory layers (chunks of 16 so the 70-token prompts cross several)
    "titans-mal": dict(layer_types=["memory", "sliding_attention"] * 2, sliding_window=5, memory_chunk_size=16),
    "yaad-mag": dict(layer_types=["memory_as_gate", "full_attention"] * 2, sliding_window=5, memory_chunk_size=16,
                     memory_preset="yaad", num_persistent_memory_tokens=2),
    "memora-mac": dict(layer_types=["memory_as_context", "full_attention"] * 2, memory_chunk_size=16,
                       memory_preset="memora", num_persistent_memory_tokens=2, num_key_value_heads=2),
    # JRT-RNN's layers, read causally (no prefix_length; the prefix is tested in test_jrt_rnn.py)
    "jrt-rnn": dict(layer_types=memlm.models.jrt_rnn_mixer_types(4), sliding_window=5, linear_key_head_dim=8),
    "moneta-lmm": dict(layer_types=["memory"] * 4, memory_chunk_size=16, memory_preset="moneta",
                       memory_rule={"depth": 3}),
    # the options of pretrained hybrids (tests/reference/test_pretrained_options.py checks each against transformers)
    "qwen3.5-options": dict(
        layer_types=["linear_attention", "sliding_attention", "linear_attention", "full_attention"], sliding_window=5,
        head_dim=16, num_key_value_heads=2, attention_output_gate=True, attention_qk_norm="head",
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25},
    ),
    "granite-options": dict(
        layer_types=["linear_attention", "full_attention"] * 2, linear_attn_type="mamba2", mamba_head_dim=8,
        mamba_d_state=6, position_embedding_type="nope", embedding_multiplier=2.0, residual_multiplier=0.5,
        attention_multiplier=0.1, logits_scaling=3.0,
    ),
    "olmo-hybrid-options": dict(
        layer_types=["linear_attention", "full_attention"] * 2, num_key_value_heads=2, attention_qk_norm="all",
        position_embedding_type="nope", norm_placement=["pre", "post"] * 2, linear_allow_neg_eigval=True,
        linear_norm_eps=1e-5,
    ),
}


def tiny_config(**overrides) -> MemLMConfig:
    base = dict(vocab_size=61, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                pad_token_id=0, eos_token_id=None)
    return MemLMConfig(**{**base, **overrides})


def tiny_model(**overrides) -> MemLMForCausalLM:
    model = MemLMForCausalLM(tiny_config(**overrides)).eval()
    with torch.no_grad():  # larger logits than the default init, so greedy choices are not near-ties
        model.lm_head.weight.mul_(20)
    return model


@pytest.fixture(params=list(VARIANTS), scope="module")
def model(request):
    torch.manual_seed(0)
    return tiny_model(**VARIANTS[request.param])


def test_forward_loss_and_backward(model):
    ids = torch.randint(1, 61, (2, 37))
    # a prefix, so that the encoder projections of prefix linear attention take part too
    prefix = {"prefix_length": 10} if model.reads_prefix else {}
    out = model(ids, labels=ids, **prefix)
    assert out.logits.shape == (2, 37, 61)
    # the causal-LM loss: mean cross-entropy of the logits at t against the token at t + 1
    expected = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, 61).float(), ids[:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss, expected)
    out.loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    model.zero_grad()


def test_cached_decoding_matches_full_recomputation(model):
    ids = torch.randint(1, 61, (2, 70))  # prefill longer than one chunk of the linear ops
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        cache = DynamicCache(config=model.config)
        prefix = model(ids[:, :50], cache=cache, use_cache=True).logits
        steps = [model(ids[:, t : t + 1], cache=cache, use_cache=True).logits for t in range(50, 70)]
    torch.testing.assert_close(torch.cat([prefix, *steps], dim=1), full, atol=1e-4, rtol=1e-4)


def test_greedy_generate_with_cache_equals_without(model):
    skip_where_transformers_generate_is_broken(model)
    ids = torch.randint(1, 61, (2, 9))
    with_cache = model.generate(ids, max_new_tokens=12, do_sample=False, use_cache=True)
    without = model.generate(ids, max_new_tokens=12, do_sample=False, use_cache=False)
    assert torch.equal(with_cache, without)


def test_left_padded_batch_matches_each_prompt_alone(model):
    skip_where_transformers_generate_is_broken(model, left_padded=True)
    prompts = [torch.randint(1, 61, (n,)) for n in (4, 11, 8)]
    width = max(len(p) for p in prompts)
    batch = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros_like(batch)
    for row, prompt in enumerate(prompts):
        batch[row, width - len(prompt) :] = prompt
        mask[row, width - len(prompt) :] = 1
    generated = model.generate(batch, attention_mask=mask, max_new_tokens=10, do_sample=False)
    for row, prompt in enumerate(prompts):
        alone = model.generate(prompt[None], max_new_tokens=10, do_sample=False)
        assert torch.equal(generated[row, width:], alone[0, len(prompt) :]), f"prompt {row}"


def test_beam_search_with_cache_equals_without(model):
    skip_where_transformers_generate_is_broken(model)
    ids = torch.randint(1, 61, (2, 6))
    kwargs = dict(max_new_tokens=6, num_beams=3, do_sample=False)
    beams = model.generate(ids, use_cache=True, **kwargs)
    assert beams.shape == (2, 12)
    assert torch.equal(beams, model.generate(ids, use_cache=False, **kwargs))


def test_save_and_load_reproduce_logits(model, tmp_path):
    ids = torch.randint(1, 61, (1, 20))
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    with torch.no_grad():
        expected = model(ids).logits
        direct = MemLMForCausalLM.from_pretrained(tmp_path).eval()
        auto = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
        assert type(auto) is MemLMForCausalLM
        # same weights; matmul kernels may round differently on differently aligned storage
        torch.testing.assert_close(direct(ids).logits, expected, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(auto(ids).logits, expected, atol=1e-4, rtol=1e-4)


def test_auto_classes_are_registered(tmp_path):
    config = tiny_config()
    assert isinstance(AutoModel.from_config(config), memlm.MemLMModel)
    config.save_pretrained(tmp_path)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), MemLMConfig)


def test_tied_embeddings_share_weights(tmp_path):
    model = tiny_model(tie_word_embeddings=True)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    model.save_pretrained(tmp_path)
    loaded = MemLMForCausalLM.from_pretrained(tmp_path)
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()


@pytest.mark.parametrize("variant", ["gdn-3:1", "hgrn2-3:1", "mamba2-3:1", "kda-3:1"])
def test_gradient_checkpointing_gives_same_gradients(variant):
    model = tiny_model(**VARIANTS[variant]).train()
    ids = torch.randint(1, 61, (2, 30))
    model(ids, labels=ids).loss.backward()
    reference = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()
    model(ids, labels=ids).loss.backward()
    for expected, param in zip(reference, model.parameters(), strict=True):
        torch.testing.assert_close(param.grad, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("variant", ["gdn-3:1", "hgrn2-3:1", "kda-3:1", "based-3:1", "jrt-rnn", "gla-3:1",
                                     "deltanet-3:1", "mamba2-3:1"])
def test_packed_documents_match_separate_forwards(variant):
    model = tiny_model(**VARIANTS[variant])
    docs = [torch.randint(1, 61, (1, n)) for n in (13, 70, 5)]
    packed = torch.cat(docs, dim=1)
    position_ids = torch.cat([torch.arange(d.shape[1]) for d in docs])[None]
    cu_seqlens = torch.tensor([0, 13, 83, 88])
    with torch.no_grad():
        logits = model(packed, position_ids=position_ids, cu_seq_lens_q=cu_seqlens).logits
        start = 0
        for doc in docs:
            alone = model(doc).logits
            torch.testing.assert_close(logits[:, start : start + doc.shape[1]], alone, atol=1e-4, rtol=1e-4)
            start += doc.shape[1]


@pytest.mark.parametrize("variant", ["gdn-gqa-sliding", "all-attention", "titans-mal", "yaad-mag", "granite-options",
                                     "kda-mla"])
def test_packed_rows_match_documents_alone(variant):
    """Training batches: [B, T] rows of packed documents, offsets over the rows read one after the other."""
    model = tiny_model(**VARIANTS[variant])
    rows = [[13, 31], [20, 24]]  # document lengths per row
    docs = [[torch.randint(1, 61, (1, n)) for n in row] for row in rows]
    ids = torch.cat([torch.cat(row, dim=1) for row in docs])
    position_ids = torch.stack([torch.cat([torch.arange(n) for n in row]) for row in rows])
    cu_seqlens = torch.tensor([0, 13, 44, 64, 88])
    with torch.no_grad():
        logits = model(ids, position_ids=position_ids, cu_seq_lens_q=cu_seqlens).logits
        for r, row in enumerate(docs):
            start = 0
            for doc in row:
                torch.testing.assert_close(logits[r : r + 1, start : start + doc.shape[1]], model(doc).logits,
                                           atol=1e-4, rtol=1e-4)
                start += doc.shape[1]
    with pytest.raises(ValueError, match="cu_seq_lens_q ends at 44, but the rows hold 2 x 44 tokens"):
        model(ids, position_ids=position_ids, cu_seq_lens_q=torch.tensor([0, 13, 44]))


def test_eager_and_sdpa_attention_agree():
    model = tiny_model(**VARIANTS["gdn-gqa-sliding"])
    ids = torch.randint(1, 61, (2, 17))
    with torch.no_grad():
        sdpa = model(ids).logits
        model.set_attn_implementation("eager")
        eager = model(ids).logits
    torch.testing.assert_close(sdpa, eager, atol=1e-4, rtol=1e-4)


def test_hgrn2_lower_bounds_rise_with_depth():
    model = tiny_model(linear_attn_type="hgrn2", hybrid_ratio="1:0")
    with torch.no_grad():
        model.model.forget_lower_bounds.lower_bounds.normal_()
    bounds = model.model.forget_lower_bounds()
    assert bounds.shape == (4, 32) and torch.all(bounds[0] == 0)
    assert torch.all(bounds[1:] >= bounds[:-1]) and torch.all(bounds < 1)


def test_input_ids_and_embeds_are_exclusive():
    model = tiny_model()
    with pytest.raises(ValueError, match="exactly one of input_ids or inputs_embeds"):
        model(torch.ones(1, 3, dtype=torch.long), inputs_embeds=torch.zeros(1, 3, 32))


def test_packed_documents_refuse_a_cache():
    model = tiny_model()
    with pytest.raises(ValueError, match="use_cache=False"):
        model(torch.ones(1, 6, dtype=torch.long), cu_seq_lens_q=torch.tensor([0, 3, 6]), use_cache=True)
