"""`spinserve models`: fetch zoo models into the cache and list what the cache holds, with sizes.

    spinserve models fetch smollm2-135m-instruct qwen2.5-coder-0.5b-instruct
    spinserve models fetch all --cache-dir /data/spinserve
    spinserve models list

Progress goes to stderr; the table and the fetched folders go to stdout. This module only
parses flags and presents results: fetching, verifying and converting live in
`spinserve.loading.zoo`, and errors (`SpinserveError`) are left for the caller to print.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from rich import box
from rich.console import Console
from rich.filesize import decimal
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

from spinserve.loading.zoo import ZOO, fetch, list_models, lookup, resolve_cache_dir

ALL_MODELS = "all"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``models`` command (``fetch`` and ``list``) to the top-level subparsers."""
    parser = subparsers.add_parser(
        "models", help="fetch and list zoo models", description="Fetch and list zoo models."
    )
    commands = parser.add_subparsers(dest="models_command", metavar="COMMAND", required=True)
    fetch_parser = commands.add_parser(
        "fetch", help="download and verify models, and write their config and tokenizer"
    )
    fetch_parser.add_argument(
        "names",
        nargs="+",
        metavar="NAME",
        help=f"zoo model names, or '{ALL_MODELS}'; known: {', '.join(ZOO)}",
    )
    fetch_parser.set_defaults(models_action=_run_fetch)
    list_parser = commands.add_parser(
        "list", help="show zoo models, which are fetched, and their size on disk"
    )
    list_parser.set_defaults(models_action=_run_list)
    for sub in (fetch_parser, list_parser):
        sub.add_argument(
            "--cache-dir",
            default=None,
            help="cache folder (default: $SPINSERVE_CACHE, else ~/.cache/spinserve)",
        )


def run(args: argparse.Namespace) -> int:
    return args.models_action(args)


def _run_fetch(args: argparse.Namespace) -> int:
    cache_dir = resolve_cache_dir(args.cache_dir)
    names = _expand_names(args.names)
    folders = []
    with _progress(Console(stderr=True)) as progress:
        for name in names:
            folders.append(fetch(name, cache_dir, progress))
    for name, folder in zip(names, folders, strict=True):
        print(f"{name}\t{folder}")
    return 0


def _expand_names(names: Sequence[str]) -> list[str]:
    """`all` means every zoo model; every name is checked before anything is downloaded."""
    if ALL_MODELS in names:
        return list(ZOO)
    for name in names:
        lookup(name)
    return list(dict.fromkeys(names))


def _run_list(args: argparse.Namespace) -> int:
    cache_dir = resolve_cache_dir(args.cache_dir)
    table = Table(box=box.SIMPLE_HEAD)
    table.add_column("name", no_wrap=True)
    table.add_column("status", no_wrap=True)
    for column in ("on disk", "fp32 copy"):
        table.add_column(column, no_wrap=True, justify="right")
    table.add_column("description", overflow="fold")
    for status in list_models(cache_dir):
        table.add_row(
            status.name,
            "fetched" if status.fetched else "not fetched",
            decimal(status.size_bytes) if status.size_bytes else "-",
            decimal(status.fp32_bytes) if status.fp32_bytes else "-",
            status.description,
        )
    console = Console()
    console.print(table)
    console.print(f"cache: {cache_dir}")
    console.print(
        "on disk: the GGUF, config, tokenizer, run-time weights (packed/) and any fp32 copy "
        "(made only for --weights float32 or a transformers reference)",
        style="dim",
    )
    return 0


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        _AmountColumn(),
        TimeElapsedColumn(),
        console=console,
    )


class _AmountColumn(ProgressColumn):
    """Bytes and speed for byte tasks, ``done/total unit`` for counted ones, else nothing."""

    def __init__(self) -> None:
        super().__init__()
        self._bytes = DownloadColumn()
        self._speed = TransferSpeedColumn()

    def render(self, task: Task) -> Text:
        unit = task.fields.get("unit", "")
        if unit == "bytes":
            return Text.assemble(self._bytes.render(task), " ", self._speed.render(task))
        if unit and task.total is not None:
            return Text(f"{task.completed:.0f}/{task.total:.0f} {unit}", style="progress.download")
        return Text("")
