import pytest
import torch

from memlm.data import passkey
from memlm.data.passkey import FIRST_DIGIT, FIRST_FILLER, MARK, QUERY


def test_rows_hold_one_needle_and_ask_for_its_key():
    input_ids, labels = passkey(20, 100, vocab_size=50, key_length=5, seed=3)
    assert input_ids.shape == labels.shape == (20, 100)
    for ids, row in zip(input_ids, labels, strict=True):
        assert (ids == MARK).sum() == 1 and (ids == QUERY).sum() == 1 and ids[-6] == QUERY
        start = int((ids == MARK).nonzero())
        key = ids[start + 1 : start + 6]
        assert torch.equal(ids[-5:], key) and torch.equal(row[-5:], key)
        assert (row[:-5] == -100).all()
        assert ((key >= FIRST_DIGIT) & (key < FIRST_FILLER)).all()
        filler = torch.cat([ids[:start], ids[start + 6 : -6]])
        assert ((filler >= FIRST_FILLER) & (filler < 50)).all()


def test_depth_places_the_needle_and_seed_fixes_the_rows():
    first, _ = passkey(4, 64, depth=0.0)
    last, _ = passkey(4, 64, depth=1.0)
    assert (first[:, 0] == MARK).all() and (last[:, 64 - 5 - 1 - 6] == MARK).all()
    assert torch.equal(passkey(5, 64, seed=1)[0], passkey(5, 64, seed=1)[0])
    assert not torch.equal(passkey(5, 64, seed=1)[0], passkey(5, 64, seed=2)[0])
    # the haystack sentence is shared by every seed: training and test rows have the same filler
    assert torch.equal(passkey(1, 64, depth=1.0, seed=1)[0][0, :20], passkey(1, 64, depth=1.0, seed=9)[0][0, :20])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_examples=0, seq_len=64), "num_examples"),
        (dict(num_examples=2, seq_len=10, key_length=5), "seq_len=10"),
        (dict(num_examples=2, seq_len=64, vocab_size=13), "vocab_size=13"),
        (dict(num_examples=2, seq_len=64, depth=1.5), "depth=1.5"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        passkey(**kwargs)
