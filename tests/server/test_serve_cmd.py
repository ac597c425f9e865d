"""`spinserve serve` flags: derived from the config dataclasses, a JSON config file whose
keys are the flag names, and flags that override the file."""

from __future__ import annotations

import json

import pytest

from spinserve.cli import serve_cmd
from spinserve.cli.main import build_parser


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
