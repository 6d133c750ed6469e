"""The ``memlm`` command: ``memlm write ...`` (RecurrentGPT-style writing with text memory), ``memlm convert ...``
(import pretrained hybrids, export memlm models)."""

from __future__ import annotations

import argparse
import sys

from memlm.convert import cli as convert_cli
from memlm.textmem import cli as write_cli

COMMANDS = {"write": write_cli, "convert": convert_cli}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="memlm", description="memlm command-line tools")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, module in COMMANDS.items():
        module.add_arguments(commands.add_parser(name, help=module.__doc__.split("\n\n")[0],
                                                 description=module.__doc__,
                                                 formatter_class=argparse.RawDescriptionHelpFormatter))
    args = parser.parse_args(argv)
    return COMMANDS[args.command].run(args)


if __name__ == "__main__":
    sys.exit(main())
