"""Build the pieces a recipe names: tokenizer, dataset, model (with LoRA), and the final evaluations."""

from __future__ import annotations

import glob
import warnings
from pathlib import Path

from datasets import Dataset

from memlm.training.config import DataSection, LoraSection, RecipeConfig
from memlm.training.data import PackedStream, load_documents, pack_documents, tokenize_documents


def build_tokenizer(config: RecipeConfig):
    """The recipe's tokenizer (a ``PreTrainedTokenizerFast``); none of the kinds but ``pretrained`` need a hub."""
    from memlm import tokenization

    spec = config.tokenizer
    if spec.kind == "pretrained":
        return pretrained_tokenizer(spec.path or config.model.pretrained)
    if spec.kind == "byte":
        return tokenization.byte_level_tokenizer()
    if spec.kind == "integer":
        task = config.data.mqar or config.data.passkey or {}
        vocab = spec.vocab_size or task.get("vocab_size")
        if not vocab:
            raise ValueError(
                "tokenizer.kind='integer' needs tokenizer.vocab_size (or data.mqar / data.passkey vocab_size)"
            )
        return tokenization.integer_tokenizer(vocab)
    if config.data.source != "text":
        raise ValueError("tokenizer.kind='bpe' trains on local plain-text data.files (data.source='text')")
    if not spec.vocab_size:
        raise ValueError("tokenizer.kind='bpe' needs tokenizer.vocab_size")
    check_data_files(config.data)
    return tokenization.train_bpe_tokenizer([str(f) for f in config.data.files], spec.vocab_size)


def pretrained_tokenizer(path: str):
    """``AutoTokenizer.from_pretrained(path)``, padding with EOS where it has no pad token (packed rows)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def check_data_files(data: DataSection) -> None:
    """Each local data file (or file a glob pattern matches) that exists must hold something: an empty one is
    named (a missing one is left to ``datasets``, which names it)."""
    if data.source not in ("text", "json", "parquet"):
        return
    for entry in data.files:
        for path in glob.glob(str(entry)) if glob.has_magic(str(entry)) else [str(entry)]:
            if Path(path).is_file() and Path(path).stat().st_size == 0:
                raise ValueError(f"data.files: {path!r} is empty (0 bytes): there is nothing to train on in it")


PADDING_WARNING = 0.5
"""Warn when more than this fraction of the packed training tokens is padding (``data.seq_len`` far beyond the
data)."""


def build_dataset(config: RecipeConfig, tokenizer) -> tuple[Dataset, dict | None]:
    """Training rows (packed text, or synthetic task rows) and, for synthetic tasks, held-out eval rows."""
    data = config.data
    if data.source in ("mqar", "passkey"):
        from memlm.data import mqar, mqar_mixture, passkey

        generate = {"mqar": mqar, "passkey": passkey}[data.source]
        args = dict(getattr(data, data.source))
        mixture = args.pop("mixture", None) if data.source == "mqar" else None
        if "num_examples" not in args and mixture is None:
            raise ValueError(f"data.{data.source} needs num_examples (and the task's sizes)")
        args.setdefault("seq_len", data.seq_len)
        if mixture is not None:  # Zoology's training set: several lengths and pair counts; eval on the others
            train_ids, train_labels = mqar_mixture(mixture, args["vocab_size"], seed=config.train.seed)
        else:
            train_ids, train_labels = generate(**args, seed=config.train.seed)
        eval_args = {**args, "num_examples": config.eval.num_examples}
        eval_ids, eval_labels = generate(**eval_args, seed=config.eval.seed)
        dataset = Dataset.from_dict({"input_ids": train_ids.tolist(), "labels": train_labels.tolist()})
        return dataset.with_format("torch"), {data.source: (eval_ids, eval_labels)}
    return packed_text(data, tokenizer), None


def packed_text(data: DataSection, tokenizer) -> Dataset | PackedStream:
    """The documents of a text source (``text``, ``json``, ``parquet``, ``hub``, ``niah``) tokenized and packed
    into rows of ``data.seq_len`` (:func:`memlm.training.data.pack_documents`): a ``Dataset``, or a
    :class:`PackedStream` when ``data.streaming``."""
    if tokenizer.pad_token_id is None:
        raise ValueError(f"the tokenizer ({type(tokenizer).__name__}) has no pad_token for the last packed row")
    check_data_files(data)
    if data.streaming:
        return PackedStream(data, tokenizer)
    rows = list(pack_documents(tokenize_documents(load_documents(data, tokenizer), tokenizer), data.seq_len,
                               tokenizer.pad_token_id))
    if not rows:
        where = f"data.files={data.files}" if data.files else f"data.source={data.source!r}"
        raise ValueError(f"the data holds no documents ({where})")
    padding = sum(row["pad_length"] for row in rows) / (len(rows) * data.seq_len)
    if padding > PADDING_WARNING:
        warnings.warn(f"data.seq_len={data.seq_len} is far beyond the data: {len(rows)} packed row(s), "
                      f"{padding:.1%} of the training tokens are padding", stacklevel=2)
    return Dataset.from_list(rows)


def build_model(config: RecipeConfig, tokenizer):
    """A new ``MemLMForCausalLM`` from ``model.config``, or ``AutoModelForCausalLM.from_pretrained``."""
    from transformers import AutoModelForCausalLM

    import memlm

    spec = config.model
    extra = {"attn_implementation": spec.attn_implementation} if spec.attn_implementation else {}
    if spec.pretrained is not None:
        model = AutoModelForCausalLM.from_pretrained(spec.pretrained, use_safetensors=True, **extra)
    else:
        fields = dict(spec.config)
        fields.setdefault("vocab_size", len(tokenizer))
        if fields["vocab_size"] < len(tokenizer):
            raise ValueError(
                f"model.config.vocab_size={fields['vocab_size']} is smaller than the tokenizer's "
                f"{len(tokenizer)} tokens"
            )
        for name in ("pad_token_id", "eos_token_id", "bos_token_id"):
            fields.setdefault(name, getattr(tokenizer, name))
        if (spec.preset == "jrt_rnn" or fields.get("prefix_lm_objective")) and fields.get("mask_token_id") is None:
            fields["mask_token_id"] = (tokenizer.mask_token_id if tokenizer.mask_token_id is not None
                                       else tokenizer.pad_token_id)
        model_config = (memlm.jrt_rnn_config if spec.preset == "jrt_rnn" else memlm.MemLMConfig)(**fields)
        model = memlm.MemLMForCausalLM(model_config, **extra)
    if spec.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if config.lora.enabled:
        model = apply_lora(model, config)
    return model


def apply_lora(model, config: RecipeConfig):
    """Wrap ``model`` with peft LoRA adapters on ``lora.target_modules`` (those present in the model)."""
    return lora_model(model, config.lora)


def lora_model(model, spec: LoraSection, exclude: tuple[str, ...] = (), key: str = "lora"):
    """``model`` wrapped by peft with LoRA adapters of ``spec`` on the modules named (last name) in
    ``spec.target_modules`` (a list; a string is peft's regex), but for those under the module prefixes
    ``exclude``; ``key`` names the section in errors."""
    from peft import LoraConfig, get_peft_model

    targets = spec.target_modules
    if isinstance(targets, list):
        names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
        present = [t for t in targets if t in names]
        if not present:
            raise ValueError(
                f"{key}.target_modules {targets} match no module of the model; module names: {sorted(names)}"
            )
        targets = present
        if exclude:
            targets = [name for name, _ in model.named_modules() if name.rsplit(".", 1)[-1] in present
                       and not any(name == prefix or name.startswith(prefix + ".") for prefix in exclude)]
    lora = LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout, target_modules=targets,
                      task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


def run_evaluations(model, config: RecipeConfig, eval_data: dict | None) -> dict[str, float]:
    """The tasks of ``eval.tasks`` on the trained model: ``{task: score}``."""
    results = {}
    if "mqar" in config.eval.tasks:
        from memlm.eval import mqar_accuracy

        input_ids, labels = eval_data["mqar"]
        results["mqar_accuracy"] = mqar_accuracy(model, input_ids, labels)
    if "passkey" in config.eval.tasks:
        from memlm.eval import mqar_accuracy, row_exact_match

        input_ids, labels = eval_data["passkey"]
        results["passkey_token_accuracy"] = mqar_accuracy(model, input_ids, labels)
        results["passkey_exact_match"] = row_exact_match(model, input_ids, labels)
    return results
