"""Recipe builders: what they say about the data before training (empty files, a seq_len far beyond the data)."""

import warnings

import pytest

from memlm.tokenization import byte_level_tokenizer
from memlm.training.builders import build_dataset, build_tokenizer
from memlm.training.config import config_from_dict


def recipe(files, seq_len=16, **tokenizer):
    return config_from_dict({"output_dir": "/tmp/unused", "train": {"max_steps": 1},
                             "model": {"config": {"hidden_size": 32}}, "tokenizer": tokenizer or {"kind": "byte"},
                             "data": {"source": "text", "files": [str(f) for f in files], "seq_len": seq_len}})


def test_an_empty_data_file_says_so(tmp_path):
    full, empty = tmp_path / "full.txt", tmp_path / "empty.txt"
    full.write_text("some text\n")
    empty.write_text("")
    for files in ([empty], [full, empty], [tmp_path / "*.txt"]):
        with pytest.raises(ValueError, match=r"data.files: '.*empty.txt' is empty \(0 bytes\)"):
            build_dataset(recipe(files), byte_level_tokenizer())
    with pytest.raises(ValueError, match=r"empty.txt' is empty"):  # before a BPE tokenizer trains on it
        build_tokenizer(recipe([empty], kind="bpe", vocab_size=300))


def test_a_seq_len_far_beyond_the_data_warns_with_the_padding_fraction(tmp_path):
    data = tmp_path / "small.txt"
    data.write_text("x" * 99 + "\n")  # 99 bytes + EOS = 100 tokens
    with pytest.warns(UserWarning, match=r"data.seq_len=400 is far beyond the data: 1 packed row\(s\), 75.0% of the"):
        dataset, _ = build_dataset(recipe([data], seq_len=400), byte_level_tokenizer())
    assert len(dataset) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 2 rows of 64: 28% padding, no warning
        build_dataset(recipe([data], seq_len=64), byte_level_tokenizer())


def test_a_prefix_lm_config_gets_the_tokenizers_mask_token_like_the_jrt_preset(tmp_path):
    from memlm.training.builders import build_model

    config = config_from_dict({"output_dir": "/tmp/unused", "train": {"max_steps": 1}, "data": {"source": "text",
                               "files": ["a.txt"]}, "model": {"config": {
                                   "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
                                   "layer_types": ["conv", "prefix_linear_attention"], "prefix_lm_objective": True}}})
    assert build_model(config, byte_level_tokenizer()).config.mask_token_id == 256  # the byte tokenizer's pad
