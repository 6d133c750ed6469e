"""JRT-RNN: the prefix read non-causally through the model, generation with the prompt as the prefix, and
the training objective."""

import pytest
import torch
from torch.nn import functional as F
from transformers import DynamicCache

import memlm
from memlm import MemLMForCausalLM
from memlm.models.jrt_rnn import mask_prefix_tokens, prefix_lm_loss

VOCAB = 61


def jrt_model(**overrides) -> MemLMForCausalLM:
    torch.manual_seed(0)
    config = memlm.jrt_rnn_config(
        num_hidden_layers=4, hidden_size=32, num_attention_heads=4, vocab_size=VOCAB, sliding_window=5,
        feature_dim=8, mask_token_id=VOCAB - 1, pad_token_id=0, eos_token_id=None, **overrides,
    )
    model = MemLMForCausalLM(config).eval()
    with torch.no_grad():  # larger logits than the default init, so greedy choices are not near-ties
        model.lm_head.weight.mul_(20)
    return model


@pytest.fixture(scope="module")
def model():
    return jrt_model()


def test_preset_follows_the_paper_pattern():
    config = memlm.jrt_rnn_config(mask_token_id=0)
    assert config.num_hidden_layers == 26 and config.hidden_size == 1024 and config.sliding_window == 128
    prefix = config.layers_of_mixer("prefix_linear_attention")
    sliding = config.layers_of_mixer("sliding_attention")
    assert prefix == [1, 6, 11, 16, 21] and sliding == [2, 7, 12, 17, 22]
    assert set(config.mixer_types) - {"prefix_linear_attention", "sliding_attention"} == {"conv"}
    assert config.linear_key_head_dim == 16 and config.prefix_lm_objective and config.prefix_mlm_weight == 0.25
    with pytest.raises(ValueError, match="num_hidden_layers must be an integer >= 2"):
        memlm.jrt_rnn_config(num_hidden_layers=1, mask_token_id=0)


def test_preset_builds_without_mask_token_and_training_with_the_masked_objective_asks_for_it():
    from memlm.models.jrt_rnn import PrefixLMInputs

    config = memlm.jrt_rnn_config(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, vocab_size=VOCAB,
                                  feature_dim=8)  # for inference: no mask token needed
    assert config.mask_token_id is None and config.prefix_lm_objective
    memlm.MemLMForCausalLM(config)
    with pytest.raises(ValueError, match=r"mask_token_id\s+is None: set model.config.mask_token_id"):
        PrefixLMInputs.for_model(config, None)
    config.prefix_mlm_weight = 0  # no masked-token loss: nothing to mask with
    assert PrefixLMInputs.for_model(config, None).probability == 0.0


def test_prefix_reads_ahead_and_the_suffix_stays_causal(model):
    ids = torch.randint(1, VOCAB - 1, (1, 30))
    later_prefix, later_suffix = ids.clone(), ids.clone()
    later_prefix[0, 11] = (ids[0, 11] % (VOCAB - 2)) + 1
    later_suffix[0, 20] = (ids[0, 20] % (VOCAB - 2)) + 1
    with torch.no_grad():
        logits = model(ids, prefix_length=12).logits
        assert not torch.allclose(model(later_prefix, prefix_length=12).logits[:, :11], logits[:, :11])
        changed = model(later_suffix, prefix_length=12).logits
        torch.testing.assert_close(changed[:, :20], logits[:, :20])
        causal = model(ids).logits  # without a prefix every layer is causal
        torch.testing.assert_close(model(later_prefix).logits[:, :11], causal[:, :11])


def test_cached_decoding_equals_full_recomputation(model):
    ids = torch.randint(1, VOCAB - 1, (2, 90))  # a prefill longer than one chunk (64) of the linear op
    with torch.no_grad():
        full = model(ids, prefix_length=70, use_cache=False).logits
        cache = DynamicCache(config=model.config)
        head = model(ids[:, :70], prefix_length=70, cache=cache, use_cache=True).logits
        steps = [model(ids[:, t : t + 1], cache=cache, use_cache=True).logits for t in range(70, 90)]
        torch.testing.assert_close(torch.cat([head, *steps], dim=1), full, atol=1e-4, rtol=1e-4)
        with pytest.raises(ValueError, match="the prefix must be read in the first call"):
            model(ids[:, :1], prefix_length=1, cache=cache, use_cache=True)


def test_generate_reads_the_prompt_as_prefix(model):
    ids = torch.randint(1, VOCAB - 1, (2, 9))
    generated = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert torch.equal(generated, model.generate(ids, max_new_tokens=8, do_sample=False, use_cache=False))
    sequence = ids
    with torch.no_grad():  # greedy by hand: the prompt is the prefix, generated tokens are causal
        for _ in range(8):
            next_token = model(sequence, prefix_length=9).logits[:, -1].argmax(-1, keepdim=True)
            sequence = torch.cat([sequence, next_token], dim=1)
    assert torch.equal(generated, sequence)
    causal = model.generate(ids, max_new_tokens=8, do_sample=False, prefix_length=0)
    assert not torch.equal(causal, generated)


def test_left_padded_batch_matches_each_prompt_alone(model):
    prompts = [torch.randint(1, VOCAB - 1, (n,)) for n in (4, 11, 8)]
    width = max(len(p) for p in prompts)
    batch = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros_like(batch)
    for row, prompt in enumerate(prompts):
        batch[row, width - len(prompt):], mask[row, width - len(prompt):] = prompt, 1
    generated = model.generate(batch, attention_mask=mask, max_new_tokens=10, do_sample=False)
    for row, prompt in enumerate(prompts):
        alone = model.generate(prompt[None], max_new_tokens=10, do_sample=False)
        assert torch.equal(generated[row, width:], alone[0, len(prompt):]), f"prompt {row}"


def test_packed_documents_read_their_own_prefixes(model):
    docs = [torch.randint(1, VOCAB - 1, (1, n)) for n in (13, 70, 5)]
    prefix_length = torch.tensor([6, 40, 5])
    position_ids = torch.cat([torch.arange(d.shape[1]) for d in docs])[None]
    with torch.no_grad():
        logits = model(torch.cat(docs, dim=1), position_ids=position_ids, cu_seq_lens_q=torch.tensor([0, 13, 83, 88]),
                       prefix_length=prefix_length).logits
        start = 0
        for doc, length in zip(docs, prefix_length.tolist(), strict=True):
            alone = model(doc, prefix_length=length).logits
            torch.testing.assert_close(logits[:, start:start + doc.shape[1]], alone, atol=1e-4, rtol=1e-4)
            start += doc.shape[1]


def test_ragged_prefixes_in_a_batch_match_each_row_alone(model):
    ids = torch.randint(1, VOCAB - 1, (3, 20))
    prefix_length = torch.tensor([0, 7, 20])
    with torch.no_grad():
        batch = model(ids, prefix_length=prefix_length).logits
        for row in range(3):
            alone = model(ids[row:row + 1], prefix_length=int(prefix_length[row])).logits
            torch.testing.assert_close(batch[row:row + 1], alone, atol=1e-4, rtol=1e-4)


def test_objective_equals_the_hand_computed_loss():
    logits = torch.randn(1, 5, 7)
    ids = torch.tensor([[3, 1, 4, 1, 5]])
    prefix_mask = torch.tensor([[True, True, False, False, False]])
    mlm_labels = torch.tensor([[2, -100, -100, -100, -100]])  # position 0 was masked; it held token 2
    log_p = logits.log_softmax(-1)[0]
    next_token = -(log_p[1, 4] + log_p[2, 1] + log_p[3, 5]) / 3  # targets 2, 3, 4: the suffix only
    masked_token = -log_p[0, 2]
    expected = next_token + 0.25 * masked_token
    torch.testing.assert_close(prefix_lm_loss(logits, ids, prefix_mask, mlm_labels, 0.25), expected)
    torch.testing.assert_close(prefix_lm_loss(logits, ids, prefix_mask, None, 0.25), next_token)


def test_model_loss_uses_the_objective_and_trains_the_encoder(model):
    ids = torch.randint(1, VOCAB - 1, (2, 24))
    prefix_length = torch.tensor([10, 16])
    prefix_mask = torch.arange(24)[None] < prefix_length[:, None]
    masked, mlm_labels = mask_prefix_tokens(ids, prefix_mask, 0.5, VOCAB - 1, torch.Generator().manual_seed(0))
    model.train()
    out = model(masked, labels=ids, prefix_length=prefix_length, mlm_labels=mlm_labels)
    model.eval()
    expected = prefix_lm_loss(out.logits, ids, prefix_mask, mlm_labels, 0.25)
    torch.testing.assert_close(out.loss, expected)
    assert not torch.allclose(out.loss, F.cross_entropy(out.logits[:, :-1].reshape(-1, VOCAB), ids[:, 1:].reshape(-1)))
    out.loss.backward()
    encoder = model.model.layers[1].mixer.k_enc_proj.weight
    assert encoder.grad is not None and encoder.grad.abs().sum() > 0
    model.zero_grad()
    with pytest.raises(ValueError, match="needs prefix_length"):
        model(ids, labels=ids)


def test_mask_prefix_tokens_masks_only_the_prefix():
    ids = torch.randint(1, 50, (64, 100))
    prefix_mask = torch.arange(100)[None].expand(64, -1) < 60
    masked, mlm_labels = mask_prefix_tokens(ids, prefix_mask, 0.15, 99, torch.Generator().manual_seed(1))
    is_masked = masked == 99
    assert not is_masked[:, 60:].any()
    assert 0.12 < is_masked[:, :60].float().mean() < 0.18
    assert torch.equal(mlm_labels[is_masked], ids[is_masked]) and (mlm_labels[~is_masked] == -100).all()


def test_bad_prefix_length_is_refused_before_any_work(model):
    with pytest.raises(ValueError, match=r"prefix_length=\[31\] must lie between 0"):
        model(torch.randint(1, VOCAB - 1, (1, 30)), prefix_length=31)
