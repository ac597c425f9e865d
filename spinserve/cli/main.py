"""Entry point of the ``spinserve`` command."""

from __future__ import annotations

import argparse
import sys

from spinserve import __version__
from spinserve.cli import bench_cmd, generate_cmd, models_cmd, serve_cmd
from spinserve.types.errors import SpinserveError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spinserve",
        description="LLM serving with heterogeneous speculative drafters.",
    )
    parser.add_argument("--version", action="version", version=f"spinserve {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    models_cmd.add_parser(commands)
    generate_cmd.add_parser(commands)
    serve_cmd.add_parser(commands)
    bench_cmd.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args) if hasattr(args, "run") else models_cmd.run(args)
    except (SpinserveError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
