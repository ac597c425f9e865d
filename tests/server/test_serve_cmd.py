"""`spinserve serve` flags: derived from the config dataclasses, a JSON config file whose
keys are the flag names, and flags that override the file."""

from __future__ import annotations

import argparse
import json

import pytest

from spinserve.cli import serve_cmd
from spinserve.cli.main import build_parser
from spinserve.server.config import ServerConfig


def merged(*argv: str) -> dict:
    return serve_cmd._merged(build_parser().parse_args(["serve", *argv]))


def test_defaults():
    values = merged()
    assert (values["host"], values["port"], values["drafters"]) == ("127.0.0.1", 8000, None)
    assert values["num_draft_tokens"] == 4 and values["max_num_seqs"] == 16


def test_config_file_then_flags(tmp_path):
    path = tmp_path / "serve.json"
    path.write_text(
        json.dumps(
            {
                "port": 9000,
                "drafter": ["ngram", "suffix"],
                "num-draft-tokens": 3,
                "max_queue": 5,
                "kv-cache-gib": 0.5,
            }
        )
    )
    from_file = merged("--config", str(path))
    assert from_file["port"] == 9000 and from_file["drafters"] == ["ngram", "suffix"]
    assert (from_file["num_draft_tokens"], from_file["max_queue"]) == (3, 5)
    assert from_file["kv_cache_gib"] == 0.5
    # a flag wins even when it states the default value; a repeated flag replaces the list
    both = merged("--port", "8000", "--drafter", "ngram", "--config", str(path))
    assert both["port"] == 8000 and both["drafters"] == ["ngram"]
    assert both["num_draft_tokens"] == 3


@pytest.mark.parametrize(
    ("content", "message"),
    [("{", "cannot read"), ("[1]", "JSON object"), ('{"colour": 1}', "unknown key")],
)
def test_bad_config_files(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        merged("--config", str(path))


def config_of(*argv: str) -> ServerConfig:
    return serve_cmd.server_config(argparse.Namespace(**merged(*argv)))


def test_safe_defaults():
    config = config_of()
    assert config.api_key is None and not config.enable_docs
    assert config.max_request_bytes == 4 << 20 and not config.allow_special_tokens_in_messages
    assert "api_key" not in repr(config)


def test_the_api_key_flag_wins_over_the_environment(monkeypatch):
    monkeypatch.setenv("SPINSERVE_API_KEY", "from-env")
    assert config_of().api_key == "from-env"
    assert config_of("--api-key", "from-flag").api_key == "from-flag"
    monkeypatch.setenv("SPINSERVE_API_KEY", "")
    assert config_of().api_key is None


def test_switches_from_flags_and_file(tmp_path):
    assert config_of("--enable-docs", "--allow-special-tokens-in-messages").enable_docs
    path = tmp_path / "serve.json"
    path.write_text(json.dumps({"enable-docs": True, "max_request_bytes": 2048}))
    config = config_of("--config", str(path))
    assert config.enable_docs and config.max_request_bytes == 2048
    path.write_text(json.dumps({"enable_docs": False}))
    assert not config_of("--config", str(path)).enable_docs


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["--api-key", " "], "api_key must not be empty"), (["--max-request-bytes", "10"], ">= 1024")],
)
def test_bad_server_settings(argv, message):
    with pytest.raises(ValueError, match=message):
        config_of(*argv)
