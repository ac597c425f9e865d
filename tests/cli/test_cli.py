"""The ``spinserve`` command, run as a user runs it: a subprocess, checked by its output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def spinserve(*args: str, cache: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SPINSERVE_CACHE": str(cache)} if cache else None
    return subprocess.run(
        [sys.executable, "-m", "spinserve.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def test_generate_json(tiny_folders):
    proc = spinserve(
        "generate",
        "--model",
        str(tiny_folders["qwen2"]),
        "--json",
        "--max-tokens",
        "6",
        "--ignore-eos",
        "hello",
        "world!",
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["num_tokens"] == 12
    assert [o["num_tokens"] for o in result["outputs"]] == [6, 6]
    assert result["token_ids"] == result["outputs"][0]["token_ids"]
    assert result["tokens_per_second"] > 0


def test_generate_on_a_float16_kv_cache(tiny_folders):
    proc = spinserve(
        "generate", "--model", str(tiny_folders["llama"]), "--json", "--max-tokens", "4",
        "--ignore-eos", "--kv-cache-dtype", "float16", "hello",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["num_tokens"] == 4


def test_generate_streams_chat(tiny_folders):
    proc = spinserve(
        "generate",
        "--model",
        str(tiny_folders["llama"]),
        "--chat",
        "--max-tokens",
        "5",
        "--ignore-eos",
        "--temperature",
        "0.7",
        "--seed",
        "3",
        "hi",
    )
    assert proc.returncode == 0, proc.stderr
    assert "tokens/s" in proc.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "no-such-model"], "unknown model 'no-such-model'"),
        (["--temperature", "-1"], "temperature must be in [0, 100]"),
        (["--top-p", "0"], "top_p must be in (0, 1]"),
        (["--max-tokens", "0"], "max_tokens must be an integer >= 1"),
        (["--max-model-len", "4"], "the prompt has"),
        (["--model", "/"], "has no config.json"),
        (["--kv-cache-dtype", "int8"], "kv_cache_dtype must be one of auto, float16"),
        (
            ["--drafter-kv-cache-dtype", "bfloat16"],
            "drafter_kv_cache_dtype must be one of auto, float16",
        ),
    ],
)
def test_generate_errors_are_one_clear_line(tiny_folders, args, message):
    base = ["generate", "--model", str(tiny_folders["llama"])]
    proc = spinserve(*base, *args, "a prompt that is long enough")
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_corrupt_gguf_is_one_clear_line(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    proc = spinserve("generate", "--model", str(bad), "x")
    assert proc.returncode == 2 and "bad.gguf: GGUF.version is 0" in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr


def test_models_list(tmp_path):
    proc = spinserve("models", "list", cache=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for name in ("qwen2.5-coder-1.5b-instruct", "smollm2-135m-instruct", "gemma-3-270m"):
        assert name in proc.stdout
    assert "not fetched" in proc.stdout


def test_models_fetch_unknown_name(tmp_path):
    proc = spinserve("models", "fetch", "nope", cache=tmp_path)
    assert proc.returncode == 2 and "unknown model 'nope'" in proc.stderr


@pytest.mark.parametrize(
    ("given", "model", "expected"),
    [
        (
            None,
            "qwen2.5-coder-1.5b-instruct",
            ["qwen2.5-coder-0.5b-instruct", "smollm2-135m-instruct", "ngram", "suffix"],
        ),
        (None, "smollm2-135m-instruct", ["ngram", "suffix"]),
        (None, "/models/any.gguf", ["ngram", "suffix"]),
        (["none"], "qwen2.5-coder-1.5b-instruct", []),
        (["ngram"], "qwen2.5-coder-1.5b-instruct", ["ngram"]),
    ],
)
def test_default_drafter_sets(given, model, expected):
    from spinserve.cli.flags import drafter_names

    assert drafter_names(given, model) == expected


def test_none_with_other_drafters_is_an_error():
    from spinserve.cli.flags import drafter_names

    with pytest.raises(ValueError, match="give it alone"):
        drafter_names(["none", "ngram"], "x")


def test_generate_json_reports_the_default_drafters_and_policy(tiny_folders):
    proc = spinserve(
        "generate", "--model", str(tiny_folders["llama"]), "--json", "--max-tokens", "12",
        "--ignore-eos", "abcabcabcabcabc",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert set(result["speculation"]) == {"ngram", "suffix"}
    assert result["selection"]["policy"] == "spin"
    plain = spinserve(
        "generate", "--model", str(tiny_folders["llama"]), "--json", "--max-tokens", "12",
        "--ignore-eos", "--drafter", "none", "abcabcabcabcabc",
    )  # fmt: skip
    assert json.loads(plain.stdout)["token_ids"] == result["token_ids"]
