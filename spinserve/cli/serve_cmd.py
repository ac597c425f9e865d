"""`spinserve serve`: the OpenAI-compatible HTTP server on a target and its drafters.

    spinserve serve --drafter qwen2.5-coder-0.5b-instruct
    spinserve serve --model smollm2-135m-instruct --drafter ngram --port 8001
    spinserve serve --config serve.json --port 9000     # flags override the file
    spinserve serve --model smollm2-135m-instruct --replicas 2   # on Ray Serve (spinserve[ray])

The config file is a JSON object whose keys are the flag names (``"num-draft-tokens": 4``
or ``"num_draft_tokens": 4``; ``"drafter": ["ngram", "suffix"]``). Precedence: flags, then
the file, then the defaults. This module parses, loads the models and starts the server;
it holds no serving logic.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import os
import typing
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import Progress

from spinserve.cli.flags import (
    ENGINE_CONFIGS,
    _flag_type,
    add_engine_flags,
    engine_config_from_flags,
    from_flags,
)
from spinserve.config.engine import EngineConfig
from spinserve.engine.builder import build_engine
from spinserve.engine.engine import LLMEngine
from spinserve.loading import zoo
from spinserve.loading.loader import load, resolve
from spinserve.server.app import build_app
from spinserve.server.config import ServerConfig
from spinserve.server.fleet.config import FleetConfig, threads_per_replica
from spinserve.server.http_server import serve
from spinserve.speculative.registry import MODEL_FREE, build_drafter
from spinserve.types.errors import SpinserveError

# The default of every flag (None for the repeatable one, which appends to its default):
# tells "not given" from "given the default value".
_UNSET = object()
_ALIASES = {"drafter": "drafters"}
API_KEY_ENV = "SPINSERVE_API_KEY"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve an OpenAI-compatible HTTP API",
        description="Serve the model over an OpenAI-compatible HTTP API with metrics.",
    )
    _add_arguments(parser)
    _set_unset_defaults(parser)
    parser.set_defaults(run=run)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=zoo.DEFAULT_TARGET,
        help=f"zoo name, Hugging Face folder or .gguf file (default: {zoo.DEFAULT_TARGET})",
    )
    parser.add_argument("--cache-dir", default=None, help="model cache folder")
    parser.add_argument("--config", default=None, metavar="FILE", help="JSON file of flag values")
    _add_server_flags(parser, ServerConfig, "server")
    _add_server_flags(parser, FleetConfig, "fleet (Ray Serve)")
    add_engine_flags(parser)


def _add_server_flags(parser: argparse.ArgumentParser, cls: type, title: str) -> None:
    """Flags from ``cls``'s fields, with the help texts kept in its field metadata."""
    group = parser.add_argument_group(title)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind, _ = _flag_type(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        if kind is bool:
            group.add_argument(flag, action="store_true", default=None, help=f.metadata["help"])
            continue
        shown = f" (default: {f.default})" if f.default is not None else ""
        group.add_argument(flag, type=kind, default=f.default, help=f.metadata["help"] + shown)


def _dests() -> list[str]:
    names = ["model", "cache_dir", "config", "drafters"]
    for cls in (*ENGINE_CONFIGS, ServerConfig, FleetConfig):
        names += [f.name for f in dataclasses.fields(cls) if f.name != "drafters"]
    return names


def run(args: argparse.Namespace) -> int:
    ns = argparse.Namespace(**_merged(args))
    server = server_config(ns)
    config = engine_config_from_flags(ns)
    logging.basicConfig(
        level=server.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    fleet = from_flags(FleetConfig, ns)
    if fleet.enabled:
        _serve_fleet(ns, config, server, fleet)
        return 0
    if config.runtime.num_threads:
        torch.set_num_threads(config.runtime.num_threads)
    engine = _load(ns.model, ns.cache_dir, config)
    app = build_app(engine, server.served_model_name or ns.model, server)
    serve(app, server)
    return 0


def _serve_fleet(
    ns: argparse.Namespace, config: EngineConfig, server: ServerConfig, fleet: FleetConfig
) -> None:
    """Serve on Ray Serve: each replica loads its own engine (with its share of the cores)."""
    try:
        from spinserve.server.fleet.deploy import serve_fleet
    except ImportError as exc:
        if (exc.name or "").split(".")[0] != "ray":
            raise
        raise SpinserveError(
            "--replicas, --ray-address and autoscaling run on Ray Serve, which is not "
            "installed: pip install 'spinserve[ray]'"
        ) from None
    threads = threads_per_replica(
        config.runtime.num_threads, os.cpu_count() or 1, fleet.most_replicas
    )
    runtime = dataclasses.replace(config.runtime, num_threads=threads)
    config = dataclasses.replace(config, runtime=runtime)
    make_engine = functools.partial(_load, ns.model, ns.cache_dir, config)
    serve_fleet(make_engine, server.served_model_name or ns.model, server, fleet, threads)


def server_config(ns: argparse.Namespace) -> ServerConfig:
    """The server's settings; the API key from ``SPINSERVE_API_KEY`` unless the flags or the
    config file give one (the environment keeps it out of ``ps`` listings)."""
    api_key = ns.api_key if ns.api_key is not None else os.environ.get(API_KEY_ENV) or None
    return from_flags(ServerConfig, argparse.Namespace(**vars(ns) | {"api_key": api_key}))


def _load(model: str, cache_dir: str | None, config: EngineConfig) -> LLMEngine:
    """Load the target and its drafters (zoo models fetched into ``cache_dir`` if missing)."""
    spec, runtime = config.speculative, config.runtime
    with Progress(console=Console(stderr=True), transient=True) as progress:
        loaded = load(model, runtime, cache_dir, progress=progress)
        # Drafters are loaded from resolved paths: the registry alone would look for zoo
        # drafters in the default cache, not in --cache-dir.
        paths = {
            name: name if name in MODEL_FREE else str(resolve(name, cache_dir, progress=progress))
            for name in spec.drafters
        }
    drafters = {name: build_drafter(path, loaded, spec, runtime) for name, path in paths.items()}
    return build_engine(loaded, config, drafters=drafters)


# --- flags, config file and defaults -------------------------------------------------------


def _merged(args: argparse.Namespace) -> dict[str, Any]:
    """Defaults, overridden by the config file, overridden by the flags given."""
    defaults = vars(_standalone_parser(sentinel=False).parse_args([]))
    given = {k: v for k, v in _given(args).items() if k in defaults}
    from_file = _read_config(given["config"]) if given.get("config") else {}
    return defaults | from_file | given


def _read_config(path: str) -> dict[str, Any]:
    """The values a JSON config file sets, parsed exactly as the same flags would be."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read the config file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"the config file {path} must hold a JSON object")
    parsed = _standalone_parser(sentinel=True).parse_args(_config_argv(data, path))
    return _given(parsed)


def _config_argv(data: dict[str, Any], path: str) -> list[str]:
    known = set(_dests()) - {"config"}
    argv: list[str] = []
    for key, value in data.items():
        dest = key.replace("-", "_")
        dest = _ALIASES.get(dest, dest)
        if dest not in known:
            raise ValueError(f"unknown key {key!r} in {path}; keys are the flag names of serve")
        flag = "--" + ("drafter" if dest == "drafters" else dest.replace("_", "-"))
        for item in value if isinstance(value, list) else [value]:
            if item is True:  # a switch: "enable-docs": true
                argv.append(flag)
            elif item is not None and item is not False:
                argv += [flag, str(item)]
    return argv


def _standalone_parser(sentinel: bool) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spinserve serve --config", add_help=False)
    _add_arguments(parser)
    if sentinel:
        _set_unset_defaults(parser)
    return parser


def _set_unset_defaults(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(**dict.fromkeys(_dests(), _UNSET) | {"drafters": None})


def _given(ns: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in vars(ns).items() if v is not _UNSET and v is not None}
