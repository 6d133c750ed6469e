"""Document recall by attribute: which questions each model answers, from ``scripts/run_eval.py`` results.

Reads the ``results.json`` that ``python scripts/run_eval.py --tasks doc_recall`` wrote for several models and prints
(or writes) a markdown table of the "contains" score per asked attribute, one column per model, rows sorted by
how often the attribute was asked::

    python scripts/doc_recall_by_attribute.py attention=/tmp/eval/attention/results.json \\
        all-GDN=/tmp/eval/all-GDN/results.json --variant plain --out /tmp/by_attribute.md

A model whose state is too small fails at random attributes and more often as documents grow; a model that has
not learned to copy some value formats fails on the same attributes whatever the length and the prompt.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", help="NAME=PATH of an scripts/run_eval.py results.json with doc_recall")
    parser.add_argument("--variant", default="plain", help="prompt variant to count (plain or jrt)")
    parser.add_argument("--out", default=None, help="also write the table to this markdown file")
    args = parser.parse_args(argv)
    args.sources = {}
    for item in args.results:
        name, sep, path = item.partition("=")
        if not sep or not name or not Path(path).is_file():
            parser.error(f"{item!r} is not NAME=PATH of an existing results.json")
        args.sources[name] = Path(path)
    return args


def scores_by_attribute(path: Path, variant: str) -> dict[str, list[float]]:
    """``{attribute: [score, ...]}`` of the doc_recall records of ``variant`` in one results.json."""
    records = [r for r in json.loads(path.read_text())["records"]
               if r["task"] == "doc_recall" and r["variant"] == variant]
    if not records:
        raise ValueError(f"{path} holds no doc_recall records of variant {variant!r}")
    if any("attribute" not in r for r in records):
        raise ValueError(f"{path} was written before doc_recall records kept their attribute: evaluate again")
    scores = defaultdict(list)
    for record in records:
        scores[record["attribute"]].append(record["score"])
    return scores


def markdown_table(tables: dict[str, dict[str, list[float]]]) -> str:
    """One row per attribute (with how often it was asked), one column per model; the models must have been asked
    the same questions (the same ``scripts/run_eval.py`` seed and number of examples)."""
    names = list(tables)
    counts = {a: len(s) for a, s in tables[names[0]].items()}
    for name in names[1:]:
        other = {a: len(s) for a, s in tables[name].items()}
        if other != counts:
            raise ValueError(f"{name} was asked other questions than {names[0]} ({other} vs {counts}): evaluate every "
                             "model with the same --seed and --num-examples")
    rows = ["| attribute | asked | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for attribute in sorted(counts, key=lambda a: (-counts[a], a)):
        cells = [sum(t[attribute]) / len(t[attribute]) for t in tables.values()]
        rows.append(f"| {attribute} | {counts[attribute]} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")
    overall = [sum(sum(s) for s in t.values()) / sum(len(s) for s in t.values()) for t in tables.values()]
    rows.append(f"| **all** | {sum(counts.values())} | " + " | ".join(f"**{c:.3f}**" for c in overall) + " |")
    return "\n".join(rows)


def main(argv=None) -> str:
    args = parse_args(argv)
    try:
        table = markdown_table({name: scores_by_attribute(path, args.variant) for name, path in args.sources.items()})
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")
    return table


if __name__ == "__main__":
    main()
