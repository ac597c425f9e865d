"""`bench serve` on real SmolLM2-135M-Instruct served by spinserve (fetched on first use)."""

from __future__ import annotations

import json

import pytest
from server.conftest import running_server

from spinserve.cli.main import main
from spinserve.config.engine import CacheConfig, EngineConfig
from spinserve.engine.builder import build_engine
from spinserve.loading import zoo
from spinserve.loading.loader import load
from spinserve.speculative.ngram import NgramDrafter

pytestmark = pytest.mark.real_model
NAME = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def smol():
    zoo.fetch(NAME, zoo.resolve_cache_dir())
    engine = build_engine(
        load(NAME, fetch_missing=False),
        EngineConfig(cache=CacheConfig(kv_cache_gib=0.25)),
        drafters={"ngram": NgramDrafter()},
    )
    with running_server(engine, model=NAME) as server:
        yield server


def test_spec_bench_side_by_side_on_smollm2(smol, tmp_path, capsys):
    url, out = smol.url + "/v1", tmp_path / "out.json"
    compare = ["--compare", f"ngram={url},drafter=ngram", f"none={url},drafter=none"]
    args = ["bench", "serve", "--dataset", "spec-bench", "--num-prompts", "3", "--max-tokens", "24"]
    assert main([*args, *compare, "--concurrency", "1,2", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert len(result["runs"]) == 4
    for run in result["runs"]:
        for r in run["requests"]:
            assert r["error"] is None and 0 < r["num_output_tokens"] <= 24
            assert 0 < r["ttft"] <= r["e2e"]
    for comparison in result["comparisons"]:
        assert comparison["num_identical"] == comparison["num_compared"] == 3
    assert "same text" in capsys.readouterr().out
