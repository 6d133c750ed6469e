import torch

from memlm import MemLMConfig, MemLMForCausalLM
from memlm.tokenization import byte_level_tokenizer
from memlm.training.data import EpochSampler, PackedCollator, pack_documents, tokenize_documents


def test_packing_keeps_every_token_and_marks_segments():
    docs = [[1] * 5, [2] * 9, [3] * 2]
    rows = list(pack_documents(docs, seq_len=6, pad_token_id=0))
    flat = [t for r in rows for t in r["input_ids"]]
    assert flat[:16] == [t for d in docs for t in d] and flat[16:] == [0, 0]
    assert [r["segment_lengths"] for r in rows] == [[5, 1], [6], [2, 2, 2]]
    assert rows[-1]["pad_length"] == 2 and all(len(r["input_ids"]) == 6 for r in rows)


def test_collator_keeps_rows_with_positions_and_offsets():
    rows = list(pack_documents([[5] * 3, [6] * 4], seq_len=4, pad_token_id=0))
    batch = PackedCollator()(rows)
    assert batch["input_ids"].shape == (2, 4)
    assert batch["cu_seq_lens_q"].tolist() == [0, 3, 4, 7, 8]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0], [0, 1, 2, 0]]
    assert batch["labels"].tolist() == [[-100, 5, 5, -100], [-100, 6, 6, -100]]


def test_packed_row_loss_equals_sum_of_documents_alone():
    torch.manual_seed(0)
    model = MemLMForCausalLM(MemLMConfig(vocab_size=50, hidden_size=32, num_hidden_layers=4,
                                         num_attention_heads=4, hybrid_ratio="3:1")).eval()
    docs = [torch.randint(1, 50, (n,)).tolist() for n in (7, 70, 12, 3, 8, 66, 30)]  # rows of 100 and 96 + 4 pads
    batch = PackedCollator()(list(pack_documents(docs, seq_len=100, pad_token_id=0)))  # two rows
    assert batch["input_ids"].shape == (2, 100)
    with torch.no_grad():
        packed_sum = model(**batch, use_cache=False).loss * (batch["labels"] != -100).sum()
        alone_sum = sum(model(torch.tensor([d]), labels=torch.tensor([d])).loss * (len(d) - 1) for d in docs)
    torch.testing.assert_close(packed_sum, alone_sum, atol=1e-3, rtol=1e-5)


def test_epoch_sampler_depends_only_on_seed_and_epoch():
    a, b = EpochSampler(10, seed=3), EpochSampler(10, seed=3)
    assert list(a) == list(b) and sorted(a) == list(range(10))
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first


def test_prompt_completion_pairs_train_on_the_completion_only():
    tokenizer = byte_level_tokenizer()
    docs = list(tokenize_documents([("Q: 2+2?", " 4"), "free text"], tokenizer))
    (ids, mask), (text_ids, text_mask) = docs
    assert ids == tokenizer("Q: 2+2? 4")["input_ids"] + [tokenizer.eos_token_id]
    assert mask == [0] * 7 + [1] * 3 and text_mask == [1] * len(text_ids)  # " 4" and EOS carry the loss
    rows = list(pack_documents(docs, seq_len=24, pad_token_id=tokenizer.pad_token_id))  # one row, 4 pads
    batch = PackedCollator()(rows)
    labels = batch["labels"].flatten().tolist()
    targets = [t for t, keep in zip(batch["input_ids"].flatten().tolist(), labels, strict=True) if keep != -100]
    # the completion (its first token too, predicted from the prompt), then the text after its first token
    assert targets == ids[7:] + text_ids[1:]


def test_collator_prepares_the_prefix_lm_objective_for_prompts_and_completions():
    from memlm.models.jrt_rnn import PrefixLMInputs

    documents = [([7] * 5 + [8] * 3, [0] * 5 + [1] * 3), ([7] * 2 + [8] * 4, [0] * 2 + [1] * 4)]
    rows = list(pack_documents(documents, seq_len=10, pad_token_id=0))  # [8, 2 | 4, 6 pads]
    torch.manual_seed(0)
    batch = PackedCollator(PrefixLMInputs(prefix_length=None, probability=1.0, mask_token_id=99))(rows)
    assert batch["prefix_length"].tolist() == [5, 2, 0, 0]  # the prompts; the document's tail has none; padding
    assert batch["input_ids"].tolist() == [[99] * 5 + [8] * 3 + [99] * 2, [8] * 4 + [0] * 6]
    assert batch["mlm_labels"].tolist() == [[7] * 5 + [-100] * 3 + [7] * 2, [-100] * 10]
    assert batch["labels"][0, 5:8].tolist() == [8, 8, 8]  # the next-token targets keep the original tokens
    fixed = PackedCollator(PrefixLMInputs(prefix_length=3, probability=0.0, mask_token_id=99))(rows)
    unmasked = torch.tensor([r["input_ids"] for r in rows])
    assert fixed["prefix_length"].tolist() == [3, 2, 3, 3] and torch.equal(fixed["input_ids"], unmasked)


def test_collator_reads_the_context_of_labelled_rows_as_prefix():
    from memlm.models.jrt_rnn import PrefixLMInputs

    rows = [{"input_ids": list(range(1, 9)), "labels": [-100] * 5 + [6, -100, 8]},
            {"input_ids": list(range(1, 9)), "labels": [-100] * 3 + [4] + [-100] * 4}]
    batch = PackedCollator(PrefixLMInputs(prefix_length=None, probability=0.0, mask_token_id=99))(rows)
    assert batch["prefix_length"].tolist() == [5, 3]
