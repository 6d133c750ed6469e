"""The ``memlm`` command: ``memlm write ...`` (RecurrentGPT-style writing with text memory)."""

from __future__ import annotations

import argparse
import sys

from memlm.textmem import cli as write_cli


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="memlm", description="memlm command-line tools")
    commands = parser.add_subparsers(dest="command", required=True)
    write_cli.add_arguments(commands.add_parser("write", help=write_cli.__doc__.split("\n\n")[0],
                                                description=write_cli.__doc__,
                                                formatter_class=argparse.RawDescriptionHelpFormatter))
    args = parser.parse_args(argv)
    return write_cli.run(args)


if __name__ == "__main__":
    sys.exit(main())
