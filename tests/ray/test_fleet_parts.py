"""The fleet's parts that need no Ray cluster: affinity keys and ranks, the settings, the
prior's journal merged as the board merges it, the relabelled metrics, and the CLI's
behaviour with and without Ray installed."""

from __future__ import annotations

import random
import subprocess
import sys
from dataclasses import astuple

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from spinserve.selection.prior import ArmPrior, SharedPrior
from spinserve.server.config import ServerConfig
from spinserve.server.errors import ApiError, queue_full
from spinserve.server.fleet.affinity import (
    CHUNK_CHARS,
    MAX_CHUNKS,
    AffinityTable,
    prefix_keys,
    rank_replicas,
)
from spinserve.server.fleet.board import FleetBoard, ReplicaReport
from spinserve.server.fleet.config import FleetConfig, threads_per_replica
from spinserve.server.fleet.metrics import FleetMetrics
from spinserve.server.fleet.wire import WireError
from spinserve.server.messages import Prompt
from spinserve.types.errors import InvalidRequestError

SYSTEM = {"role": "system", "content": "You are a terse assistant who answers in one line."}


def chat(*turns: str) -> Prompt:
    roles = ["user", "assistant"] * len(turns)
    return Prompt(
        messages=(SYSTEM, *({"role": r, "content": t} for r, t in zip(roles, turns, strict=False)))
    )


def test_a_later_turn_keeps_the_keys_of_the_earlier_ones():
    first = prefix_keys(chat("What is the capital of Japan?"))
    later = prefix_keys(chat("What is the capital of Japan?", "Tokyo.", "And of France?"))
    other = prefix_keys(chat("Name a prime number."))
    assert len(later) > len(first) > 0
    assert later[: len(first)] == first
    assert other[: len(first)] != first  # the system prompt is shared, the question is not
    assert prefix_keys(Prompt(text="short")) == ()
    assert len(prefix_keys(Prompt(text="x" * CHUNK_CHARS * (MAX_CHUNKS + 5)))) == MAX_CHUNKS
    assert prefix_keys(Prompt(token_ids=tuple(range(40)))) == prefix_keys(
        Prompt(token_ids=tuple(range(40)))
    )


def test_the_table_finds_the_longest_prefix_served_by_a_live_replica():
    table = AffinityTable(capacity=4)
    table.record(("k1", "k2"), "a")
    table.record(("k1", "k2", "k3"), "b")
    assert table.lookup(("k1", "k2", "k3", "k4"), {"a": 1, "b": 1}) == "b"
    assert table.lookup(("k1", "k2", "k3"), {"a": 1}) is None  # b is gone; k1/k2 moved to b
    table.record(("k5", "k6"), "a")  # past the capacity: the oldest keys are forgotten
    assert table.lookup(("k1",), {"a": 1, "b": 1}) is None
    assert table.lookup(("k5", "k6"), {"a": 1}) == "a"


@pytest.mark.parametrize(
    ("affine", "loads", "slack", "ranks"),
    [
        ("a", {"a": 3, "b": 1}, 2, [["a"], ["b"]]),  # within the slack: stay
        ("a", {"a": 4, "b": 1}, 2, [["b", "a"]]),  # overloaded: the least loaded
        (None, {"a": 2, "b": 0, "c": 1}, 2, [["b", "c", "a"]]),
        ("gone", {"a": 0}, 2, [["a"]]),
        ("a", {"a": 0}, 0, [["a"], []]),
    ],
)
def test_ranks(affine, loads, slack, ranks):
    assert rank_replicas(affine, loads, slack) == ranks


def test_ties_are_spread_over_idle_replicas():
    rng = random.Random(0)
    firsts = {rank_replicas(None, {"a": 0, "b": 0}, 2, rng)[0][0] for _ in range(20)}
    assert firsts == {"a", "b"}


def test_fleet_settings():
    assert not FleetConfig().enabled
    assert FleetConfig(replicas=2).enabled and FleetConfig(ray_address="auto").enabled
    scaled = FleetConfig(min_replicas=1, max_replicas=4, target_ongoing_requests=2)
    assert scaled.enabled and scaled.most_replicas == 4
    assert scaled.autoscaling_config() == {
        "min_replicas": 1,
        "initial_replicas": 1,
        "max_replicas": 4,
        "target_ongoing_requests": 2,
    }
    assert FleetConfig(replicas=3).autoscaling_config() is None
    with pytest.raises(ValueError, match="replicas must be >= 1"):
        FleetConfig(replicas=0)
    with pytest.raises(ValueError, match="must not exceed max_replicas"):
        FleetConfig(min_replicas=5, max_replicas=4)
    assert FleetConfig(replicas=9, max_replicas=4).autoscaling_config()["initial_replicas"] == 4
    assert FleetConfig(min_replicas=3).autoscaling_config() == {
        "min_replicas": 3,
        "initial_replicas": 3,
        "max_replicas": 3,
        "target_ongoing_requests": 4.0,
    }
    with pytest.raises(ValueError, match="target_ongoing_requests"):
        FleetConfig(target_ongoing_requests=0)
    assert threads_per_replica(0, 16, 4) == 4
    assert threads_per_replica(0, 2, 4) == 1
    assert threads_per_replica(3, 2, 4) == 3


def _default(key):
    return ArmPrior(0.5, 0.05, 0.2, 3.0)


def test_the_board_merges_journals_into_one_prior_as_if_one_server_learned_all():
    rng = random.Random(1)
    learned = [
        (rng.choice(["ngram@2", "suffix@4"]), rng.randint(1, 9), rng.random() * 9, 0.0, 5.0)
        for _ in range(40)
    ]
    learned = [(k, c, t, t * t / c + 1.0, d) for k, c, t, _, d in learned]
    alone = SharedPrior(_default, 4.0, 50.0)
    for entry in learned:
        alone.learn(*entry)
    a, b = SharedPrior(_default, 4.0, 50.0), SharedPrior(_default, 4.0, 50.0)
    for prior in (a, b):
        assert prior.take_journal() == []  # starts the journal
    board = FleetBoard()
    for i, entry in enumerate(learned):  # two replicas learn in turns and sync each time
        replica = a if i % 2 else b
        replica.learn(*entry)
        replica.load(board.sync_prior(replica.take_journal(), 50.0, 4.0))
    for replica in (a, b):  # the next sync brings each the other's last lesson
        replica.load(board.sync_prior(replica.take_journal(), 50.0, 4.0))
    newcomer = SharedPrior(_default, 4.0, 50.0)
    newcomer.load(board.prior_state())
    for key in ("ngram@2", "suffix@4"):
        expected = astuple(alone.prior(key))
        for prior in (a, b, newcomer):
            assert astuple(prior.prior(key)) == pytest.approx(expected)
    assert alone.total_weight > 0
    assert newcomer.total_weight == pytest.approx(alone.total_weight)
    assert board.prior_weight() == pytest.approx(alone.total_weight)


def test_a_prior_without_a_journal_keeps_nothing():
    prior = SharedPrior(_default)
    prior.learn("ngram@2", 4, 2.0, 1.5, 8.0)
    assert prior.take_journal() == []  # nothing was kept before the first call


def _report(replica: str, text: str) -> ReplicaReport:
    return ReplicaReport(replica, f"actor-{replica}", 2, 8, text, 1.5, False, 0.0)


def test_every_replicas_metrics_are_labelled_with_it():
    text = (
        "# HELP spinserve:generation_tokens_total Generated tokens\n"
        "# TYPE spinserve:generation_tokens_total counter\n"
        'spinserve:generation_tokens_total{model_name="m"} 7.0\n'
    )
    metrics = FleetMetrics(CollectorRegistry(), "m")
    metrics.observe_retry()
    metrics.observe_rejected("queue_full")
    exposition = metrics.exposition([_report("r1", text), _report("r2", text)], 3.0).decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(exposition)
        for s in family.samples
    }
    for replica in ("r1", "r2"):
        key = ("spinserve:generation_tokens_total", (("model_name", "m"), ("replica", replica)))
        assert samples[key] == 7.0
        assert (
            samples[("spinserve:fleet_replica_queue", (("model_name", "m"), ("replica", replica)))]
            == 2
        )
    assert samples[("spinserve:fleet_replicas", (("model_name", "m"),))] == 2
    assert (
        samples[("spinserve:fleet_prior_weight", (("model_name", "m"), ("replica", "fleet")))] == 3
    )
    assert samples[("spinserve:fleet_requests_retried_total", (("model_name", "m"),))] == 1
    rejected = (
        "spinserve:fleet_request_rejected_total",
        (("model_name", "m"), ("reason", "queue_full")),
    )
    assert samples[rejected] == 1


def test_errors_cross_to_the_ingress_whole():
    error = WireError.of(queue_full(8)).to_error()
    assert (error.status, error.body(), error.headers) == (
        429,
        queue_full(8).body(),
        {"Retry-After": "1"},
    )
    invalid = WireError.of(InvalidRequestError("bad stop", param="stop")).to_error()
    assert isinstance(invalid, ApiError) and (invalid.status, invalid.param) == (400, "stop")


def _spinserve(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )


def test_serve_without_ray_installed_says_how_to_get_it():
    out = _spinserve(
        "import sys; sys.modules['ray'] = None\n"
        "from spinserve.cli.main import main\n"
        "sys.exit(main(['serve', '--replicas', '2']))"
    )
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "error: --replicas, --ray-address and autoscaling run on Ray Serve, which is not "
        "installed: pip install 'spinserve[ray]'"
    ]


def test_a_single_server_never_imports_ray():
    out = _spinserve(
        "import sys\n"
        "from spinserve.cli.main import build_parser\n"
        "from spinserve.cli.serve_cmd import _merged, server_config\n"
        "import argparse\n"
        "args = build_parser().parse_args(['serve', '--model', 'x', '--port', '0'])\n"
        "ns = argparse.Namespace(**_merged(args))\n"
        "from spinserve.cli.flags import from_flags\n"
        "from spinserve.server.fleet.config import FleetConfig\n"
        "assert not from_flags(FleetConfig, ns).enabled\n"
        "import spinserve.server.app, spinserve.server.http_server\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'ray'))"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_only_the_fleet_imports_ray():
    from test_architecture import ROOT, imported, modules

    fleet = ROOT / "server" / "fleet"
    no_ray = {fleet / "__init__.py", fleet / "config.py", fleet / "affinity.py", fleet / "wire.py"}
    no_ray |= {fleet / "board.py"}
    for path in modules():
        uses_ray = any(name.split(".")[0] == "ray" for name in imported(path))
        inside = path.parent == fleet and path not in no_ray
        assert uses_ray <= inside, f"{path.relative_to(ROOT)} imports ray"


def test_autoscaling_settings_reach_ray_serve():
    pytest.importorskip("ray.serve")
    from ray import serve

    from spinserve.server.fleet.deploy import replica_options
    from spinserve.server.fleet.replica import EngineReplica

    server = ServerConfig(max_queue=32)
    scaled = FleetConfig(min_replicas=2, max_replicas=6, target_ongoing_requests=3)
    options = replica_options(server, scaled, num_threads=2)
    config = serve.deployment(EngineReplica).options(**options)._deployment_config
    assert config.autoscaling_config.min_replicas == 2
    assert config.autoscaling_config.max_replicas == 6
    assert config.autoscaling_config.target_ongoing_requests == 3
    assert config.max_ongoing_requests == 32
    assert options["ray_actor_options"] == {"num_cpus": 2}
    fixed = replica_options(server, FleetConfig(replicas=3, replica_cpus=0.5), num_threads=1)
    assert fixed["num_replicas"] == 3 and "autoscaling_config" not in fixed
    assert fixed["ray_actor_options"] == {"num_cpus": 0.5}
