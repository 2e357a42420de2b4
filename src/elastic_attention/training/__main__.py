"""`python -m elastic_attention.training train|make-data ...`: the same commands as `elastic-attn`,
runnable under `torchrun -m elastic_attention.training train ...`."""

import argparse
import sys

from .command import add_parsers


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m elastic_attention.training")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args) or 0


if __name__ == "__main__":
    sys.exit(main())
