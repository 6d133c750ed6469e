import random

import pytest
from transformers import AutoTokenizer

from memlm.tokenization import (
    BYTE_VOCAB_SIZE,
    byte_level_tokenizer,
    encode,
    integer_tokenizer,
    train_bpe_tokenizer,
)

UNICODE_TEXTS = [
    "",
    "hello world",
    "  leading and trailing spaces  ",
    "tabs\tand\nnewlines\r\n\n\tmixed \t \n",
    "naïve café über straße ÆØÅ",
    "emoji 🙂🚀👩‍👩‍👧 flags 🇫🇷 and ☃",
    "中文，日本語、한국어 العربية עברית",
    "math ∑ ∫ √ ≠ ∞, zero\u200bwidth, nbsp\u00a0here",
    "control \x00\x01\x7f bytes",
]
WORDS = (
    "the of and a to in is you that it he was for on are as with his they at be this have from or one had by "
    "word but not what all were we when your can said there use an each which she do how their if will up other "
    "about out many then them these so some her would make like him into time has look two more write go see "
    "number no way could people my than first water been call who oil its now find long down day did get come "
    "made may part memory attention recurrent state token model layer"
)


def corpus(num_lines=300, seed=0):
    rng = random.Random(seed)
    words = WORDS.split()
    lines = []
    for _ in range(num_lines):
        sentence = " ".join(rng.choice(words) for _ in range(rng.randint(3, 15)))
        lines.append(sentence.capitalize() + rng.choice([".", "!", "?", ", then", "; 42."]))
    return lines


@pytest.fixture(scope="module")
def bpe_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    paths = []
    for i in range(2):
        path = root / f"part{i}.txt"
        path.write_text("\n".join(corpus(seed=i)) + "\n", encoding="utf-8")
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def bpe(bpe_files):
    return train_bpe_tokenizer(bpe_files, 600, model_max_length=4096)


def assert_reloads(tokenizer, directory, texts):
    tokenizer.save_pretrained(directory)
    reloaded = AutoTokenizer.from_pretrained(directory)
    assert len(reloaded) == len(tokenizer)
    assert reloaded.model_max_length == tokenizer.model_max_length
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        assert getattr(reloaded, name) == getattr(tokenizer, name), name
    for text in texts:
        assert reloaded.encode(text) == tokenizer.encode(text)
        assert reloaded.decode(tokenizer.encode(text)) == text
    return reloaded


# ---------------------------------------------------------------- byte level


def test_byte_level_ids_are_utf8_bytes_and_round_trip():
    tokenizer = byte_level_tokenizer()
    for text in UNICODE_TEXTS:
        ids = tokenizer.encode(text)
        assert ids == list(text.encode("utf-8")), text
        assert tokenizer.decode(ids) == text
    every_char = "".join(chr(i) for i in range(1, 0x3000)) + "".join(chr(i) for i in range(0x1F600, 0x1F650))
    assert tokenizer.decode(tokenizer.encode(every_char)) == every_char
    assert tokenizer.encode(every_char) == list(every_char.encode("utf-8"))


def test_byte_level_special_tokens_and_no_automatic_bos_eos():
    tokenizer = byte_level_tokenizer(model_max_length=1024)
    assert BYTE_VOCAB_SIZE == 259 == len(tokenizer)
    assert (tokenizer.pad_token, tokenizer.bos_token, tokenizer.eos_token) == ("<|pad|>", "<|bos|>", "<|eos|>")
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (256, 257, 258)
    assert tokenizer.unk_token is None
    assert tokenizer.model_max_length == 1024
    assert tokenizer("ab")["input_ids"] == [97, 98]
    assert tokenizer.encode("a<|eos|>b") == [97, 258, 98]
    assert tokenizer.decode([97, 258, 98]) == "a<|eos|>b"
    assert tokenizer.decode([257, 97, 258], skip_special_tokens=True) == "a"
    tokenizer.add_bos_token = True
    assert tokenizer.encode("a") == [257, 97]


def test_byte_level_batch_padding():
    tokenizer = byte_level_tokenizer()
    batch = tokenizer(["ab", "abcd", "é"], padding=True)
    assert batch["input_ids"] == [[97, 98, 256, 256], [97, 98, 99, 100], [195, 169, 256, 256]]
    assert batch["attention_mask"] == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 0, 0]]


def test_byte_level_save_and_reload(tmp_path):
    reloaded = assert_reloads(byte_level_tokenizer(model_max_length=2048), tmp_path, UNICODE_TEXTS)
    assert reloaded.encode("x") == [120]


# ---------------------------------------------------------------- BPE


def test_bpe_merges_and_round_trips(bpe, bpe_files):
    text = bpe_files[0].read_text(encoding="utf-8")
    ids = bpe.encode(text)
    assert len(ids) < len(text.encode("utf-8")) / 2
    assert bpe.decode(ids) == text
    for sample in UNICODE_TEXTS:
        assert bpe.decode(bpe.encode(sample)) == sample, sample
    assert 256 + 3 < len(bpe) <= 600
    assert bpe.model_max_length == 4096


def test_bpe_special_tokens(bpe):
    assert (bpe.pad_token, bpe.bos_token, bpe.eos_token) == ("<|pad|>", "<|bos|>", "<|eos|>")
    assert (bpe.pad_token_id, bpe.bos_token_id, bpe.eos_token_id) == (0, 1, 2)
    assert bpe.unk_token is None
    ids = bpe.encode("the word<|eos|>")
    assert ids[-1] == 2 and 1 not in ids
    batch = bpe(["the", "the number of people"], padding=True)
    assert batch["input_ids"][0][1:] == [0] * (len(batch["input_ids"][1]) - 1)
    assert batch["attention_mask"][0] == [1] + [0] * (len(batch["input_ids"][1]) - 1)


def test_bpe_save_and_reload(bpe, tmp_path):
    assert_reloads(bpe, tmp_path, [*UNICODE_TEXTS, "The number of people who write long words."])


def test_bpe_from_texts_with_extra_special_tokens():
    lines = corpus(200, seed=3)
    tokenizer = train_bpe_tokenizer(
        None, 400, min_frequency=3, special_tokens=["<|pad|>", "<|bos|>", "<|eos|>", "<|sep|>"], texts=iter(lines)
    )
    assert tokenizer.convert_tokens_to_ids("<|sep|>") == 3
    assert tokenizer.extra_special_tokens == ["<|sep|>"]
    assert tokenizer.decode(tokenizer.encode("a<|sep|>b"), skip_special_tokens=True) == "ab"
    text = "\n".join(lines)
    assert len(tokenizer.encode(text)) < len(text.encode("utf-8"))
    single = train_bpe_tokenizer(None, 300, texts="one string, one string, one string")
    assert len(single.encode("one string")) < len("one string")


def test_bpe_bad_arguments(bpe_files, tmp_path):
    missing = tmp_path / "missing.txt"
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        train_bpe_tokenizer([bpe_files[0], missing], 500)
    with pytest.raises(FileNotFoundError, match="no such text file"):
        train_bpe_tokenizer(tmp_path, 500)
    with pytest.raises(ValueError, match="vocab_size must be larger than .* = 259"):
        train_bpe_tokenizer(bpe_files, 259)
    for vocab_size in (0, -5, 1.5, True):
        with pytest.raises(ValueError, match="vocab_size must be a positive integer"):
            train_bpe_tokenizer(bpe_files, vocab_size)
    with pytest.raises(ValueError, match="min_frequency"):
        train_bpe_tokenizer(bpe_files, 500, min_frequency=0)
    with pytest.raises(ValueError, match="exactly one of files"):
        train_bpe_tokenizer(None, 500)
    with pytest.raises(ValueError, match="exactly one of files"):
        train_bpe_tokenizer(bpe_files, 500, texts=["x"])
    with pytest.raises(ValueError, match="at least one text file"):
        train_bpe_tokenizer([], 500)
    with pytest.raises(ValueError, match="special_tokens must hold"):
        train_bpe_tokenizer(bpe_files, 500, special_tokens=["<|pad|>", "<|eos|>"])
    with pytest.raises(ValueError, match="special_tokens must hold"):
        train_bpe_tokenizer(bpe_files, 500, special_tokens=["<|pad|>", "<|bos|>", "<|eos|>", "<|pad|>"])
    with pytest.raises(ValueError, match="model_max_length"):
        train_bpe_tokenizer(bpe_files, 500, model_max_length=0)


# ---------------------------------------------------------------- integers


def test_integer_tokenizer_round_trip_and_special_tokens():
    tokenizer = integer_tokenizer(500)
    assert len(tokenizer) == 502
    assert tokenizer.encode("12 7 300") == [12, 7, 300]
    assert tokenizer.encode("  0\t499\n1 ") == [0, 499, 1]
    assert tokenizer.decode([12, 7, 300]) == "12 7 300"
    assert (tokenizer.pad_token, tokenizer.eos_token) == ("<|pad|>", "<|eos|>")
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id) == (500, 501)
    assert tokenizer.bos_token is None and tokenizer.unk_token is None
    ids = tokenizer.encode("3 4<|eos|>")
    assert ids == [3, 4, 501]
    assert tokenizer.decode(ids) == "3 4 <|eos|>"
    assert tokenizer.decode(ids, skip_special_tokens=True) == "3 4"
    ids = list(range(500))
    assert tokenizer.encode(tokenizer.decode(ids)) == ids


def test_integer_tokenizer_padding_and_reload(tmp_path):
    tokenizer = integer_tokenizer(64, model_max_length=128)
    batch = tokenizer(["1 2 3", "63"], padding=True)
    assert batch["input_ids"] == [[1, 2, 3], [63, 64, 64]]
    assert batch["attention_mask"] == [[1, 1, 1], [1, 0, 0]]
    reloaded = assert_reloads(tokenizer, tmp_path, ["1 2 3", "0 63 5"])
    assert reloaded.bos_token is None


def test_integer_tokenizer_rejects_unknown_words_and_bad_sizes():
    tokenizer = integer_tokenizer(10)
    for text in ("10", "3 x", "-1"):
        with pytest.raises(Exception, match="Missing \\[UNK\\] token"):
            tokenizer.encode(text)
    for vocab_size in (0, -1, 2.0, None):
        with pytest.raises(ValueError, match="vocab_size must be a positive integer"):
            integer_tokenizer(vocab_size)
    with pytest.raises(ValueError, match="model_max_length"):
        byte_level_tokenizer(model_max_length=-1)


def test_integer_tokenizer_text_it_cannot_encode_gets_a_clear_error():
    tokenizer = integer_tokenizer(10)
    assert encode(tokenizer, "3 9 0") == [3, 9, 0]
    for text, word in (("3 x 4", "x"), ("10", "10"), ("1 -1", "-1")):
        with pytest.raises(ValueError, match=f"cannot encode the word '{word}' .*integers from 0 to 9"):
            encode(tokenizer, text)


def test_training_data_through_the_integer_tokenizer_names_the_bad_word():
    from memlm.training.data import tokenize_documents

    tokenizer = integer_tokenizer(10)
    assert next(tokenize_documents(["1 2"], tokenizer)) == ([1, 2, 11], [1, 1, 1])
    with pytest.raises(ValueError, match="cannot encode the word 'hello'"):
        list(tokenize_documents(["1 2", "hello 3"], tokenizer))
