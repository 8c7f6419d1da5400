"""The ``photoinfer`` command: a thin dispatcher to one module per subcommand in :mod:`photoinfer.commands`."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from . import __version__

#: Subcommands, each a module ``photoinfer.commands.<name>`` with HELP, DESCRIPTION, add_arguments(), run().
COMMANDS = ("predict", "evaluate", "info", "simulate", "train", "fit", "partition")

DESCRIPTION = """\
photoinfer: data-driven stellar models (Green et al. 2021) and Bayesian inference of
stars from photometry.

A stellar model maps (Teff, logg, [M/H]) to absolute magnitudes and colours in many
passbands, plus an extinction vector R telling how dust dims each band.  Use
'photoinfer COMMAND --help' for what each command does, with examples.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="photoinfer", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"photoinfer {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only print results and errors")
    parser.add_argument("-v", "--verbose", action="store_true", help="print debugging details")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        mod = importlib.import_module(f"photoinfer.commands.{name}")
        p = sub.add_parser(name, help=mod.HELP, description=mod.DESCRIPTION,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(p)
        p.set_defaults(func=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 bad input, 1 other failure)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("photoinfer: %(message)s"))
    logger = logging.getLogger("photoinfer")
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError, KeyError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"photoinfer {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"photoinfer {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
