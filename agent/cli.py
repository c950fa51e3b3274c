"""`tissuetalk` command line: dispatches to agent/commands/<name>.py."""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from agent.commands import COMMANDS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tissuetalk",
        description="Analyse spatial and single-cell transcriptomics from natural-language requests.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=f"agent.commands.{name}")
        # argument definitions are light; each module keeps heavy imports inside run()
        importlib.import_module(f"agent.commands.{name}").add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if not sys.warnoptions:  # library noise (docrep, squidpy deprecations) is not for the user
        import warnings

        warnings.filterwarnings("ignore", category=SyntaxWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        os.environ.setdefault("LOGLEVEL", "WARNING")  # spatialdata's (squidpy's) INFO lines
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 0
    from tools.errors import TissueTalkError

    try:
        return importlib.import_module(args._module).run(args) or 0
    except TissueTalkError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
