"""``memlm convert``: import a pretrained hybrid as a memlm checkpoint, or export a memlm model.

    memlm convert Qwen/Qwen3.5-0.8B runs/qwen3_5_0_8b --drop vision --drop mtp
    memlm convert runs/my_hybrid runs/my_hybrid_qwen3_5 --to qwen3_5

SRC is a local checkpoint directory or a hub name; DST a new (or empty) directory, written only when the whole
conversion succeeds. Families and flags: docs/guides/convert.md.
"""

from __future__ import annotations

import argparse

DTYPES = ("float32", "bfloat16", "float16")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from memlm.convert.registry import DROP_FLAGS, EXPORTERS

    parser.add_argument("source", metavar="SRC", help="checkpoint directory or hub name")
    parser.add_argument("destination", metavar="DST", help="directory to write (must not exist or be empty)")
    parser.add_argument("--to", choices=sorted(EXPORTERS), default=None,
                        help="export format (default: a memlm checkpoint)")
    parser.add_argument("--drop", action="append", default=[], choices=sorted(DROP_FLAGS),
                        help="drop a part memlm cannot represent that does not change the language model: "
                             + "; ".join(f"{flag}: {what}" for flag, what in DROP_FLAGS.items()))
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty DST")
    parser.add_argument("--revision", default=None, help="hub revision (branch, tag or commit) of SRC")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                        help="dtype of the written weights (default: the dtype SRC stores most of its weights in)")


def run(args: argparse.Namespace, write=print) -> int:
    import torch

    from memlm.convert import ConversionError, convert

    dtype = None if args.dtype is None else getattr(torch, args.dtype)
    try:
        conversion = convert(args.source, args.destination, to=args.to, drop=args.drop, overwrite=args.overwrite,
                             revision=args.revision, torch_dtype=dtype)
    except ConversionError as error:
        raise SystemExit(f"memlm convert: {error}") from None
    write(conversion.summary())
    return 0
