"""The ``bertsilicon`` command: one subcommand per area, each registered by its area's module.

Conventions every subcommand follows: ``--model`` (a model directory; default the built-in MiniLM), ``--texts FILE``
(one text per line; default the built-in corpus), ``--batch-size``, ``--seq-len``, ``--hardware``, ``--out`` (where
results go); ``--help`` shows every option with its default. A user mistake is one line on stderr and exit status 2;
``--debug`` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# Areas that add subcommands: each module has ``register(subparsers)``.
_AREAS = ("bertsilicon.demo", "bertsilicon.profiler.cli", "bertsilicon.benchmark.cli", "bertsilicon.benchmark.peers_cli",
          "bertsilicon.precision.cli", "bertsilicon.distill.cli", "bertsilicon.distill.task_cli",
          "bertsilicon.distill.mlm_cli", "bertsilicon.encode.cli", "bertsilicon.models.artifact_cli",
          "bertsilicon.early_exit.cli")
# What a user's mistake raises (a bad argument, a missing or unreadable file): reported in one line.
USER_ERRORS = (ValueError, TypeError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError,
               NotImplementedError, KeyError, OSError)


class _Parser(argparse.ArgumentParser):
    """Every (sub)command shows its defaults in ``--help``."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = _Parser(prog="bertsilicon", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"bertsilicon {__version__}")
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for area in _AREAS:
        importlib.import_module(area).register(sub)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as exc:
        if args.debug:
            raise
        message = str(exc) if not isinstance(exc, KeyError) else f"unknown key {exc}"
        print(f"bertsilicon {args.command}: error: {message} (--debug shows the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
