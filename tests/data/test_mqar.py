import pytest
import torch

from memlm.data import mqar

N, T, PAIRS, V = 64, 64, 8, 128


def queries_of(input_ids, labels, num_kv_pairs):
    """Query positions ``[N, num_kv_pairs]`` (one label after each), sorted."""
    positions = (labels != -100).nonzero()[:, 1].view(input_ids.shape[0], -1) - 1
    assert positions.shape[1] == num_kv_pairs
    return positions


def test_shapes_dtypes_and_token_ranges():
    input_ids, labels = mqar(N, T, PAIRS, V)
    assert input_ids.shape == labels.shape == (N, T)
    assert input_ids.dtype == labels.dtype == torch.long
    keys, values = input_ids[:, 0 : 2 * PAIRS : 2], input_ids[:, 1 : 2 * PAIRS : 2]
    assert ((keys >= 1) & (keys < V // 2)).all()
    assert ((values >= V // 2) & (values < V)).all()
    assert ((input_ids >= 0) & (input_ids < V)).all()
    for row in range(N):  # distinct keys and values
        assert keys[row].unique().numel() == PAIRS and values[row].unique().numel() == PAIRS


def test_each_key_queried_once_and_labelled_with_its_value():
    input_ids, labels = mqar(N, T, PAIRS, V, random_non_queries=False)
    assert ((labels != -100).sum(-1) == PAIRS).all()
    assert (labels[:, : 2 * PAIRS + 1] == -100).all()
    queries = queries_of(input_ids, labels, PAIRS)
    assert (queries >= 2 * PAIRS).all() and (queries % 2 == 0).all()
    for row in range(N):
        pairs = dict(input_ids[row, : 2 * PAIRS].view(PAIRS, 2).tolist())
        queried = input_ids[row, queries[row]].tolist()
        assert sorted(queried) == sorted(pairs)
        assert labels[row, queries[row] + 1].tolist() == [pairs[key] for key in queried]
        # without random fill, the query region is zero except at the queries; values never enter it
        region = input_ids[row, 2 * PAIRS :].clone()
        region[queries[row] - 2 * PAIRS] = 0
        assert (region == 0).all()


def test_random_non_queries_fill_the_rest():
    input_ids, labels = mqar(N, T, PAIRS, V, random_non_queries=True)
    filler = torch.ones_like(input_ids, dtype=torch.bool)
    filler[:, : 2 * PAIRS] = False
    filler.scatter_(1, queries_of(input_ids, labels, PAIRS), False)
    tokens = input_ids[filler]
    assert tokens.unique().numel() > V // 2  # spread over the whole vocabulary
    assert (tokens == 0).float().mean() < 0.05
    # the pairs, queries and labels are those of the zero-filled rows with the same seed
    zero_ids, zero_labels = mqar(N, T, PAIRS, V, random_non_queries=False)
    torch.testing.assert_close(labels, zero_labels)
    torch.testing.assert_close(input_ids[~filler], zero_ids[~filler])


def test_deterministic_by_seed():
    a = mqar(8, T, PAIRS, V, seed=3)
    b = mqar(8, T, PAIRS, V, seed=3)
    c = mqar(8, T, PAIRS, V, seed=4)
    torch.testing.assert_close(a, b)
    assert not torch.equal(a[0], c[0]) and not torch.equal(a[1], c[1])
    state = torch.get_rng_state()
    mqar(8, T, PAIRS, V)
    assert torch.equal(state, torch.get_rng_state())  # the global generator is untouched


def test_gaps_follow_the_power_law():
    seq_len, pairs = 256, 4  # 124 gap slots
    input_ids, labels = mqar(2000, seq_len, pairs, 512, power_a=0.01)
    gaps = (queries_of(input_ids, labels, pairs) - 2 * pairs) // 2 + 1
    counts = torch.bincount(gaps.flatten(), minlength=(seq_len - 2 * pairs) // 2 + 1)
    assert counts[1:5].sum() > 10 * counts[-4:].sum()
    # power_a = 1 is uniform
    input_ids, labels = mqar(2000, seq_len, pairs, 512, power_a=1.0)
    gaps = (queries_of(input_ids, labels, pairs) - 2 * pairs) // 2 + 1
    counts = torch.bincount(gaps.flatten(), minlength=(seq_len - 2 * pairs) // 2 + 1)
    assert 0.5 < counts[1:5].sum() / counts[-4:].sum() < 2


def test_smallest_valid_sizes():
    input_ids, labels = mqar(4, 8, 2, 8)  # 4 * pairs == seq_len == vocab_size
    assert ((labels != -100).sum(-1) == 2).all()


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"num_examples": 0}, "num_examples"),
        ({"num_examples": 2.0}, "num_examples"),
        ({"seq_len": -4}, "seq_len"),
        ({"num_kv_pairs": True}, "num_kv_pairs"),
        ({"vocab_size": 0}, "vocab_size"),
        ({"seq_len": 63}, "seq_len"),
        ({"vocab_size": 62}, "vocab_size"),
        ({"num_kv_pairs": 17}, "num_kv_pairs"),
        ({"power_a": 0.0}, "power_a"),
        ({"context_repeats": 0}, "context_repeats"),
    ],
)
def test_bad_arguments(kwargs, name):
    args = {"num_examples": 2, "seq_len": T, "num_kv_pairs": PAIRS, "vocab_size": V} | kwargs
    with pytest.raises(ValueError, match=name):
        mqar(**args)


def test_jrt_rows_repeat_the_pairs_before_the_same_queries():
    plain_ids, plain_labels = mqar(8, T, PAIRS, V, seed=3)
    ids, labels = mqar(8, T, PAIRS, V, seed=3, context_repeats=3)
    block = 2 * PAIRS
    assert ids.shape == labels.shape == (8, T + 2 * block)
    for copy in range(3):
        assert torch.equal(ids[:, copy * block : (copy + 1) * block], plain_ids[:, :block])
    assert torch.equal(ids[:, 3 * block :], plain_ids[:, block:])
    assert torch.equal(labels[:, 3 * block :], plain_labels[:, block:])
    assert (labels[:, : 3 * block] == -100).all()


def test_mixture_pads_short_rows_and_keeps_each_config():
    from memlm.data import mqar_mixture

    configs = [{"num_examples": 5, "seq_len": 16, "num_kv_pairs": 2},
               {"num_examples": 3, "seq_len": 32, "num_kv_pairs": 8}]
    input_ids, labels = mqar_mixture(configs, vocab_size=64, seed=7)
    assert input_ids.shape == labels.shape == (8, 32)
    short_ids, short_labels = mqar(5, 16, 2, 64, seed=7)
    long_ids, long_labels = mqar(3, 32, 8, 64, seed=8)
    assert torch.equal(input_ids[:5, :16], short_ids) and torch.equal(labels[:5, :16], short_labels)
    assert (input_ids[:5, 16:] == 0).all() and (labels[:5, 16:] == -100).all()
    assert torch.equal(input_ids[5:], long_ids) and torch.equal(labels[5:], long_labels)
    assert ((labels != -100).sum(-1) == torch.tensor([2] * 5 + [8] * 3)).all()


@pytest.mark.parametrize(
    ("configs", "message"),
    [
        ([], "non-empty list"),
        ([{"num_examples": 4, "seq_len": 16}], r"mixture\[0\].*missing keys \['num_kv_pairs'\]"),
        ([{"num_examples": 4, "seq_len": 16, "num_kv_pairs": 2, "pairs": 3}], r"unknown keys \['pairs'\]"),
        ([{"num_examples": 4, "seq_len": 16, "num_kv_pairs": 2}, {"num_examples": 4, "seq_len": 16, "num_kv_pairs": 5}],
         r"mixture\[1\].*num_kv_pairs=5 needs seq_len >= 4"),
    ],
)
def test_mixture_rejects_bad_configs(configs, message):
    from memlm.data import mqar_mixture

    with pytest.raises(ValueError, match=message):
        mqar_mixture(configs, vocab_size=64)
