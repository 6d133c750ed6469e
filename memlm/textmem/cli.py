"""``memlm write``: RecurrentGPT-style writing in the terminal (or a local web page), stopped and resumed
from its store.

    memlm write --store story.db --backend hf:runs/my_model --premise "A lighthouse keeper finds a map."
    memlm write --store story.db --backend http://127.0.0.1:8000/v1 --auto 5     # 5 steps, plans chosen by rule
    memlm write --store story.db --backend vllm:DIR --web                       # http://127.0.0.1:8765
    memlm write --store story.db --export story.md

In the terminal session, after each paragraph: ``1``/``2``/``3`` writes with that plan, ``e N`` rewrites plan
N first, ``p`` writes with a plan of your own, ``m`` rewrites the short-term memory, ``s QUERY`` searches the
long-term memory, ``q`` quits (everything written so far is in the store; run the same command to go on).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", required=True, help="SQLite file of the story (created if missing)")
    parser.add_argument("--scope", default="story", help="name of the story inside the store")
    parser.add_argument("--backend", help="hf:MODEL_DIR, vllm:MODEL_DIR, or an OpenAI-compatible http(s):// URL")
    parser.add_argument("--model-name", default=None, help="model id at an http backend (default: the first served)")
    parser.add_argument("--premise", default=None, help="premise of a new story (asked for when missing)")
    parser.add_argument("--auto", type=int, default=None, metavar="N", help="write N steps without asking, then stop")
    parser.add_argument("--choose", choices=("first", "model"), default="model",
                        help="how --auto picks a plan: the first one, or the backend chooses")
    parser.add_argument("--export", default=None, metavar="FILE", help="write the story as Markdown and stop")
    parser.add_argument("--web", action="store_true", help="serve the human-in-the-loop page instead")
    parser.add_argument("--host", default="127.0.0.1", help="loopback address of --web (the page has no login)")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--memory-words", type=int, default=200, help="short-term memory budget in words")
    parser.add_argument("--retrieve", type=int, default=2, help="long-term paragraphs put in each step's prompt")
    parser.add_argument("--max-new-tokens", type=int, default=1024)
    parser.add_argument("--temperature", type=float, default=0.0)


def run(args: argparse.Namespace, read=input, write=print) -> int:
    """The ``write`` command; ``read`` and ``write`` are the terminal (replaceable in tests)."""
    from memlm.textmem import RecurrentWriter, StoreBusyError, TextMemory, backend_from_spec

    store = Path(args.store)
    if args.export is None and not args.backend:
        raise SystemExit("memlm write: --backend is required (except with --export)")
    if args.auto is not None and args.auto < 1:
        raise SystemExit(f"memlm write: --auto must be at least 1, got {args.auto}")
    if args.web:
        from memlm.textmem.web import check_loopback

        try:
            check_loopback(args.host)
        except ValueError as error:
            raise SystemExit(f"memlm write: {error}") from None
    if args.export is not None and not store.is_file():
        raise SystemExit(f"memlm write: --store {str(store)!r} does not exist: nothing to export")
    backend = backend_from_spec(args.backend, model=args.model_name, temperature=args.temperature) \
        if args.backend else None
    try:  # --export only reads: it runs beside a writer, and never creates or changes a store
        memory = TextMemory(store, scope=args.scope, read_only=args.export is not None)
    except (StoreBusyError, ValueError) as error:
        raise SystemExit(f"memlm write: {error}") from None
    with memory:
        writer = RecurrentWriter(memory, backend, memory_words=args.memory_words, retrieve_k=args.retrieve,
                                 chooser=args.choose, max_new_tokens=args.max_new_tokens)
        if args.export is not None:
            Path(args.export).write_text(writer.export_markdown())
            write(f"wrote {len(writer.paragraphs())} paragraphs to {args.export}")
            return 0
        if args.web:
            return serve(writer, args.host, args.port, write)
        if not writer.started:
            premise = args.premise or read("Premise of the story: ")
            show(writer.start(premise, on_text=stream(write)), write)
        elif args.premise:
            write(f"[the story in {args.store} has started already; --premise is ignored] ")
        if args.auto is not None:
            for _ in range(args.auto):
                show(writer.step(on_text=stream(write)), write)
            write(f"summary: {len(writer.paragraphs())} paragraphs in {args.store} (scope {args.scope})")
            return 0
        return interact(writer, read, write)


def stream(write):
    """The backend's streaming callback: text goes to the terminal as it comes (None when not printing)."""
    return (lambda text: print(text, end="", flush=True)) if write is print else None


def show(result, write) -> None:
    write(f"\n--- step {result.step} ---\n{result.paragraph}\n\nshort-term memory: {result.short_term}\n")
    for number, plan in enumerate(result.plans, 1):
        write(f"  plan {number}: {plan}")


def interact(writer, read, write) -> int:
    help_line = "[1-3] write with plan, e N: edit plan N, p: your own plan, m: edit memory, s QUERY: search, q: quit"
    while True:
        write(help_line)
        try:
            command = read("> ").strip()
        except EOFError:
            command = "q"
        if command == "q":
            write(f"summary: {len(writer.paragraphs())} paragraphs; resume with the same command")
            return 0
        try:
            if command in ("1", "2", "3"):
                show(writer.step(int(command) - 1, on_text=stream(write)), write)
            elif command.startswith("e "):
                writer.edit_plan(int(command[2:]) - 1, read("new plan: "))
            elif command == "p":
                show(writer.step(read("your plan: "), on_text=stream(write)), write)
            elif command == "m":
                write(f"short-term memory: {writer.short_term()}")
                writer.edit_short_term(read("new short-term memory: "))
            elif command.startswith("s "):
                for item in writer.memory.search(command[2:], k=3, kind=None):
                    write(f"  [{item.id} {item.kind} {item.score:.2f}] {item.text}")
            else:
                write(f"unknown command {command!r}")
        except (ValueError, IndexError) as error:
            write(f"error: {error}")


def serve(writer, host: str, port: int, write) -> int:
    from memlm.textmem.web import make_server

    server = make_server(writer, host, port)
    write(f"memlm writer on http://{host}:{server.server_address[1]} (Ctrl-C stops; the store keeps everything)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="memlm write", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
