from types import SimpleNamespace

import pytest
import torch
from torch import nn

import memlm
from memlm.data import mqar
from memlm.eval import mqar_accuracy, row_exact_match

V = 64


class LabelModel(nn.Module):
    """Predicts ``labels[t] + offsets[row]`` at ``t - 1`` for the rows it was built with (offset 0: right)."""

    def __init__(self, input_ids, labels, offsets):
        super().__init__()
        self.rows = {
            tuple(ids.tolist()): (row, offset) for ids, row, offset in zip(input_ids, labels, offsets, strict=True)
        }
        self.calls = []

    def forward(self, input_ids, use_cache=None):
        self.calls.append((input_ids.shape[0], use_cache, self.training, torch.is_grad_enabled()))
        logits = torch.zeros(*input_ids.shape, V)
        for b, ids in enumerate(input_ids):
            row, offset = self.rows[tuple(ids.tolist())]
            t = (row != -100).nonzero()[:, 0]
            logits[b, t - 1, (row[t] + offset) % V] = 1.0
        return SimpleNamespace(logits=logits)


def test_right_and_wrong_predictions():
    input_ids, labels = mqar(10, 32, 4, V)
    right = LabelModel(input_ids, labels, [0] * 10)
    assert mqar_accuracy(right, input_ids, labels, batch_size=4) == 1.0
    assert [call[0] for call in right.calls] == [4, 4, 2]
    assert all(call[1:] == (False, False, False) for call in right.calls)  # use_cache=False, eval, no_grad
    assert right.training  # restored
    assert mqar_accuracy(LabelModel(input_ids, labels, [1] * 10), input_ids, labels) == 0.0
    half = LabelModel(input_ids, labels, [0, 1] * 5)  # every other row answered right
    assert mqar_accuracy(half, input_ids, labels, batch_size=3) == 0.5


def test_row_exact_match_needs_every_label_of_a_row():
    input_ids, labels = mqar(10, 32, 4, V)
    assert row_exact_match(LabelModel(input_ids, labels, [0] * 10), input_ids, labels) == 1.0
    assert row_exact_match(LabelModel(input_ids, labels, [0, 1] * 5), input_ids, labels, batch_size=3) == 0.5
    one_wrong = labels.clone()
    one_wrong[0, (labels[0] != -100).nonzero()[0, 0]] += 1  # one of row 0's labels can no longer be hit
    assert row_exact_match(LabelModel(input_ids, labels, [0] * 10), input_ids, one_wrong) == 0.9
    unlabelled = labels.clone()
    unlabelled[3] = -100
    with pytest.raises(ValueError, match="every row needs a labelled position"):
        row_exact_match(LabelModel(input_ids, labels, [0] * 10), input_ids, unlabelled)


def scores_by_hand(model: nn.Module, input_ids: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """(token accuracy, row exact match) from one forward pass of the whole batch in eval mode: the argmax at
    ``t - 1`` against the label at ``t``, counted over the labelled positions (and rows). Restores the mode."""
    training = model.training
    model.eval()
    with torch.no_grad():
        predicted = model(input_ids=input_ids).logits[:, :-1].argmax(-1)
    model.train(training)
    scored = labels[:, 1:] != -100
    right = (predicted == labels[:, 1:]) & scored
    token_accuracy = int(right.sum()) / int(scored.sum())
    exact_match = sum(bool(torch.equal(r, s)) for r, s in zip(right, scored, strict=True)) / len(labels)
    return token_accuracy, exact_match


def test_tiny_memlm_model():
    torch.manual_seed(0)
    config = memlm.MemLMConfig(
        vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, hybrid_ratio="1:1"
    )
    model = memlm.MemLMForCausalLM(config)
    with torch.no_grad():  # large logits: the few right argmaxes are not near-ties that batching could flip
        model.lm_head.weight.mul_(20)
    input_ids, labels = mqar(6, 32, 4, V)
    right = labels.clone()  # the model's own predictions as labels on rows 0, 2 and 4: those rows are all right
    with torch.no_grad():
        predicted = model.eval()(input_ids=input_ids).logits[:, :-1].argmax(-1)
    right[::2, 1:] = torch.where(labels[::2, 1:] != -100, predicted[::2], -100)
    token_accuracy, exact_match = scores_by_hand(model, input_ids, right)
    assert exact_match == 0.5 and token_accuracy >= 0.5  # the other rows' labels are mostly missed
    for training in (True, False):
        model.train(training)
        assert mqar_accuracy(model, input_ids, right, batch_size=4) == token_accuracy
        assert row_exact_match(model, input_ids, right, batch_size=4) == exact_match
        assert model.training is training and all(m.training is training for m in model.modules())


@pytest.mark.parametrize(
    "labels_fn, batch_size, name",
    [
        (lambda labels: labels[:, 1:], 64, "labels"),
        (lambda labels: torch.full_like(labels, -100), 64, "labels"),
        (lambda labels: labels.index_fill(1, torch.tensor([0]), 70), 64, "labels"),
        (lambda labels: labels, 0, "batch_size"),
    ],
)
def test_bad_arguments(labels_fn, batch_size, name):
    input_ids, labels = mqar(2, 16, 2, V)
    with pytest.raises(ValueError, match=name):
        mqar_accuracy(LabelModel(input_ids, labels, [0, 0]), input_ids, labels_fn(labels), batch_size=batch_size)


def test_a_jrt_rnn_reads_each_row_context_as_its_prefix():
    torch.manual_seed(0)
    config = memlm.jrt_rnn_config(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, vocab_size=V,
                                  sliding_window=4, feature_dim=4, mask_token_id=0)
    model = memlm.MemLMForCausalLM(config).eval()
    input_ids, labels = mqar(num_examples=6, seq_len=32, num_kv_pairs=4, vocab_size=V, seed=0)
    seen, forward = [], model.forward
    model.forward = lambda **kwargs: seen.append(kwargs["prefix_length"]) or forward(**kwargs)
    mqar_accuracy(model, input_ids, labels, batch_size=4)
    first_label = (labels != -100).float().argmax(-1)
    assert torch.equal(torch.cat(seen), first_label) and bool((first_label >= 8).all())  # past the 4 pairs
