"""`spinserve bench serve` against a real spinserve server (tiny random models, loopback)."""

from __future__ import annotations

import json

import pytest

from spinserve.cli.main import main

PROMPTS = [
    {"prompt": "Write a poem about the sea.", "category": "chat"},
    {"prompt": "def add(a, b):", "category": "code"},
    {"messages": [{"role": "user", "content": "List three colours."}], "category": "chat"},
    {"prompt": "for i in range(10):", "category": "code"},
]
# Fixed-length answers: a random model may end a reply at any token.
IGNORE_EOS = '{"ignore_eos": true}'
MAX_TOKENS = 8


@pytest.fixture
def dataset(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    return str(path)


def bench(*args: str) -> int:
    return main(["bench", "serve", "--max-tokens", str(MAX_TOKENS), *args])


def test_sweep_times_every_request(live, dataset, tmp_path, capsys):
    out, png = tmp_path / "out.json", tmp_path / "sweep.png"
    url = live.url + "/v1"
    args = ["--base-url", url, "--dataset", dataset, "--concurrency", "1,2"]
    assert bench(*args, "--extra-body", IGNORE_EOS, "--out", str(out), "--plot", str(png)) == 0
    table = capsys.readouterr().out
    assert "c=1" in table and "c=2" in table and "code" in table
    result = json.loads(out.read_text())
    assert result["settings"]["endpoints"][0]["model"] == "tiny-llama"  # from GET /v1/models
    assert [run["load"] for run in result["runs"]] == ["concurrency=1", "concurrency=2"]
    for run in result["runs"]:
        assert run["busy_s"] > 0
        assert [r["prompt_id"] for r in run["requests"]] == ["1", "2", "3", "4"]
        for r in run["requests"]:
            assert r["error"] is None and r["text"]
            assert r["num_output_tokens"] == MAX_TOKENS and r["num_prompt_tokens"] > 0
            assert 0 < r["ttft"] <= r["e2e"]
            assert r["ttft"] + sum(r["itl"]) <= r["e2e"]
    overall = [s for s in result["summaries"] if s["category"] == "all"]
    assert all(s["output_tokens_per_s"] > 0 and s["num_failed"] == 0 for s in overall)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_of_two_configurations_agrees_under_greedy(live, dataset, tmp_path, capsys):
    """Speculation (the server's default drafter) must not change greedy text."""
    out = tmp_path / "out.json"
    url = live.url + "/v1"
    compare = ["--compare", f"spin={url}", f"none={url},drafter=none"]
    assert bench("--dataset", dataset, *compare, "--concurrency", "2", "--out", str(out)) == 0
    assert "same text" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert [e["extra_body"] for e in result["settings"]["endpoints"]] == [{}, {"drafter": "none"}]
    (comparison,) = result["comparisons"]
    assert comparison["config"] == "none" and comparison["baseline"] == "spin"
    assert comparison["num_identical"] == comparison["num_compared"] == len(PROMPTS)
    assert comparison["tokens_per_s_ratio"] > 0


def test_request_rate_on_the_completions_endpoint(live, dataset, tmp_path):
    out = tmp_path / "out.json"
    args = ["--base-url", live.url + "/v1", "--dataset", dataset, "--endpoint", "completions"]
    assert bench(*args, "--request-rate", "20", "--num-prompts", "3", "--out", str(out)) == 0
    (run,) = json.loads(out.read_text())["runs"]
    assert run["load"] == "rate=20" and len(run["requests"]) == 3
    assert all(r["error"] is None for r in run["requests"])
