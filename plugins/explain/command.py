"""``tuneforge explain RUN --input FILE [--output PATH] [--rows N]``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from tuneforge.components import Command
from tuneforge.errors import UserError


def _positive(text: str) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


class ExplainCommand(Command):
    help: ClassVar[str] = "explain a finished run's predictions on a file (one HTML page)"

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("run_dir", type=Path, metavar="RUN", help="a completed run folder")
        parser.add_argument(
            "--input",
            "-i",
            type=Path,
            required=True,
            metavar="FILE",
            help="the rows to explain, read as `tuneforge predict --input` reads them "
            "(tabular: with the label column)",
        )
        parser.add_argument(
            "--output",
            "-o",
            type=Path,
            default=None,
            metavar="PATH",
            help="the HTML page (default RUN/explanations/<input stem>.html)",
        )
        parser.add_argument(
            "--rows",
            type=_positive,
            default=8,
            metavar="N",
            help="text and image runs: explain the first N rows (default 8); tabular runs "
            "score every row",
        )
        parser.add_argument(
            "--steps",
            type=_positive,
            default=50,
            metavar="N",
            help="Integrated Gradients steps for text runs (default 50)",
        )
        parser.add_argument(
            "--target",
            type=int,
            default=None,
            metavar="INDEX",
            help="the output (class index) to explain; default: each row's prediction",
        )

    def run(self, args: Any) -> int:
        from tuneforge.console import Console
        from tuneforge.explain import explain

        if args.target is not None and args.target < 0:
            raise UserError(f"--target {args.target}: an output index is 0 or more")
        explain(
            args.run_dir,
            args.input,
            args.output,
            args.rows,
            Console(),
            disable=args.disable_plugin,
            local=args.plugin,
            steps=args.steps,
            target=args.target,
        )
        return 0
