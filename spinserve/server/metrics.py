"""Prometheus metrics of one server, in a registry the app owns (never the global one).

Names follow vLLM's (``vllm:`` -> ``spinserve:``) where a vLLM metric means the same thing,
so dashboards carry over. Every metric has a ``model_name`` label.

==========================================================  =========  =======================
metric                                                      type       labels
==========================================================  =========  =======================
spinserve:num_requests_running                              gauge
spinserve:num_requests_waiting                              gauge
spinserve:kv_cache_usage_perc  (fraction of KV blocks, 0-1)  gauge
spinserve:prompt_tokens_total  (per engine request)         counter
spinserve:generation_tokens_total                           counter
spinserve:request_success_total                             counter    finished_reason
spinserve:request_rejected_total  (429/503 at admission)   counter    reason
spinserve:time_to_first_token_seconds                       histogram
spinserve:inter_token_latency_seconds (per output token)    histogram
spinserve:e2e_request_latency_seconds                       histogram
spinserve:spec_decode_num_drafts_total                      counter
spinserve:spec_decode_num_draft_tokens_total                counter
spinserve:spec_decode_num_accepted_tokens_total             counter
spinserve:spec_decode_num_accepted_tokens_per_pos_total     counter    position
spinserve:drafter_requests_total  (requests that used it)   counter    drafter
spinserve:drafter_drafts_total                              counter    drafter
spinserve:drafter_draft_tokens_total                        counter    drafter
spinserve:drafter_accepted_tokens_total                     counter    drafter
spinserve:drafter_seconds_total  (drafting + verification)  counter    drafter
spinserve:drafter_failures_total  (calls raised/timed out)  counter    drafter
spinserve:drafter_acceptance_rate  (since start)            gauge      drafter
spinserve:drafter_goodput_tokens_per_second  (since start)  gauge      drafter
==========================================================  =========  =======================

The speculation counters mean what vLLM's do: a *draft* is one verification of at least one
draft token; *draft tokens* were proposed, *accepted tokens* kept by the target; position j
counts drafts whose token j was accepted. A request that uses no drafter adds nothing.
Latencies start when the HTTP request arrives. Inter-token latency is the time between a
request's steps divided among the tokens the step gave it (a step with 3 accepted drafts
and a bonus token is 4 tokens), so it is the latency a reader of the stream sees per token.

Derived rates (PromQL)::

    # acceptance rate: accepted / proposed draft tokens
    rate(spinserve:spec_decode_num_accepted_tokens_total[5m])
      / rate(spinserve:spec_decode_num_draft_tokens_total[5m])
    # mean accepted length: tokens emitted per draft (the recovered/bonus token counts)
    1 + rate(spinserve:spec_decode_num_accepted_tokens_total[5m])
          / rate(spinserve:spec_decode_num_drafts_total[5m])
    # acceptance at position j
    rate(spinserve:spec_decode_num_accepted_tokens_per_pos_total{position="j"}[5m])
      / rate(spinserve:spec_decode_num_drafts_total[5m])
    # output tokens per second
    rate(spinserve:generation_tokens_total[1m])
    # p99 time to first token
    histogram_quantile(0.99, sum by (le) (rate(spinserve:time_to_first_token_seconds_bucket[5m])))
    # per-drafter acceptance and goodput (accepted + recovered/bonus tokens per second of
    # drafting and verification)
    rate(spinserve:drafter_accepted_tokens_total[5m])
      / rate(spinserve:drafter_draft_tokens_total[5m])
    (rate(spinserve:drafter_accepted_tokens_total[5m]) + rate(spinserve:drafter_drafts_total[5m]))
      / rate(spinserve:drafter_seconds_total[5m])

Request metrics are observed by the engine thread as outputs come out; gauges and
speculation counters once per engine-loop iteration (`observe_engine`, cheap).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from spinserve.speculative.stats import SpecStats

PREFIX = "spinserve:"
FINISH_REASONS = ("stop", "length", "abort", "error")
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0)  # fmt: skip
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5,
               0.75, 1.0, 2.5, 5.0, 10.0, 20.0)  # fmt: skip
E2E_BUCKETS = (0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0,
               50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0)  # fmt: skip


@dataclass
class _Seen:
    """What a drafter's cumulative statistics were at the last observation."""

    drafts: int = 0
    draft_tokens: int = 0
    accepted: int = 0
    seconds: float = 0.0
    failures: int = 0
    per_position: list[int] = field(default_factory=list)


class ServerMetrics:
    """Every metric of one server. Thread-safe (prometheus-client locks each metric)."""

    def __init__(
        self, registry: CollectorRegistry, model_name: str, drafters: Sequence[str] = ()
    ) -> None:
        self.registry = registry
        self._model = model_name
        self._seen: dict[str, _Seen] = {}
        self._prefix_seen = (0, 0)  # prefix cache (queries, hits) at the last observation

        def make(kind, name, doc, labels=(), **kw):
            return kind(PREFIX + name, doc, ["model_name", *labels], registry=registry, **kw)

        self._running = make(Gauge, "num_requests_running", "Requests in the running batch")
        self._waiting = make(Gauge, "num_requests_waiting", "Requests waiting to run")
        self._kv = make(Gauge, "kv_cache_usage_perc", "Fraction of KV cache blocks in use (0-1)")
        self._prompt = make(Counter, "prompt_tokens", "Prompt tokens of admitted requests")
        self._prefix_queries = make(
            Counter, "prefix_cache_queries", "Prompt tokens looked up in the prefix cache"
        )
        self._prefix_hits = make(
            Counter, "prefix_cache_hits", "Prompt tokens found in the prefix cache"
        )
        self._generation = make(Counter, "generation_tokens", "Generated tokens")
        self._success = make(Counter, "request_success", "Finished requests", ["finished_reason"])
        self._rejected = make(Counter, "request_rejected", "Requests refused", ["reason"])
        self._ttft = make(
            Histogram, "time_to_first_token_seconds", "Time to first token", buckets=TTFT_BUCKETS
        )
        self._itl = make(
            Histogram, "inter_token_latency_seconds", "Latency per output token",
            buckets=ITL_BUCKETS,
        )  # fmt: skip
        self._e2e = make(
            Histogram, "e2e_request_latency_seconds", "Request latency", buckets=E2E_BUCKETS
        )
        self._drafts = make(Counter, "spec_decode_num_drafts", "Verified drafts")
        self._draft_tokens = make(Counter, "spec_decode_num_draft_tokens", "Draft tokens")
        self._accepted = make(Counter, "spec_decode_num_accepted_tokens", "Accepted tokens")
        self._accepted_pos = make(
            Counter,
            "spec_decode_num_accepted_tokens_per_pos",
            "Accepted tokens by position in the draft",
            ["position"],
        )
        self._d_requests = make(
            Counter, "drafter_requests", "Requests that used the drafter", ["drafter"]
        )
        self._d_drafts = make(Counter, "drafter_drafts", "Verified drafts", ["drafter"])
        self._d_tokens = make(Counter, "drafter_draft_tokens", "Draft tokens", ["drafter"])
        self._d_accepted = make(Counter, "drafter_accepted_tokens", "Accepted", ["drafter"])
        self._d_failures = make(
            Counter, "drafter_failures", "Drafter calls that failed or ran late", ["drafter"]
        )
        self._d_seconds = make(
            Counter, "drafter_seconds", "Drafting and verification seconds", ["drafter"]
        )
        self._d_rate = make(
            Gauge, "drafter_acceptance_rate", "Acceptance rate since start", ["drafter"]
        )
        self._d_goodput = make(
            Gauge,
            "drafter_goodput_tokens_per_second",
            "Accepted + recovered/bonus tokens per second of drafting and verification",
            ["drafter"],
        )
        self._show_zeros(drafters)

    def _show_zeros(self, drafters: Sequence[str]) -> None:
        """Create the label sets known up front, so they are exported (as 0) before use."""
        m = self._model
        for metric in (self._running, self._waiting, self._kv, self._prompt, self._generation):
            metric.labels(m)
        self._prefix_queries.labels(m)
        self._prefix_hits.labels(m)
        for metric in (self._ttft, self._itl, self._e2e):
            metric.labels(m)
        for metric in (self._drafts, self._draft_tokens, self._accepted):
            metric.labels(m)
        for reason in FINISH_REASONS:
            self._success.labels(m, reason)
        for d in drafters:
            for metric in (self._d_requests, self._d_drafts, self._d_tokens, self._d_accepted):
                metric.labels(m, d)
            self._d_seconds.labels(m, d)

    # --- the event loop ----------------------------------------------------------------------

    def observe_rejected(self, reason: str) -> None:
        self._rejected.labels(self._model, reason).inc()

    # --- the engine thread -------------------------------------------------------------------

    def observe_added(self, num_prompt_tokens: int) -> None:
        self._prompt.labels(self._model).inc(num_prompt_tokens)

    def observe_tokens(self, num_new: int, since_last: float, first: bool) -> None:
        """``num_new`` tokens came out ``since_last`` seconds after the request's previous
        ones, or after its arrival when ``first`` (then it is the TTFT)."""
        if num_new <= 0:
            return
        self._generation.labels(self._model).inc(num_new)
        if first:
            self._ttft.labels(self._model).observe(since_last)
            return
        itl = self._itl.labels(self._model)
        for _ in range(num_new):
            itl.observe(since_last / num_new)

    def observe_finished(self, reason: str, latency: float, drafter: str | None) -> None:
        self._success.labels(self._model, reason).inc()
        if reason != "abort":
            self._e2e.labels(self._model).observe(latency)
        if drafter is not None:
            self._d_requests.labels(self._model, drafter).inc()

    def observe_engine(
        self,
        num_running: int,
        num_waiting: int,
        kv_usage: float,
        drafter_stats: Mapping[str, SpecStats],
        prefix_cache: tuple[int, int] = (0, 0),
    ) -> None:
        """``prefix_cache``: (queries, hits) in prompt tokens since start."""
        self._running.labels(self._model).set(num_running)
        self._waiting.labels(self._model).set(num_waiting)
        self._kv.labels(self._model).set(kv_usage)
        for name, stats in drafter_stats.items():
            self._observe_drafter(name, stats)
        (queries, hits), (seen_queries, seen_hits) = prefix_cache, self._prefix_seen
        if queries != seen_queries:
            self._prefix_queries.labels(self._model).inc(queries - seen_queries)
            self._prefix_hits.labels(self._model).inc(hits - seen_hits)
            self._prefix_seen = prefix_cache

    def _observe_drafter(self, name: str, stats: SpecStats) -> None:
        """Add what changed since the last look to the counters (statistics are cumulative)."""
        seen = self._seen.setdefault(name, _Seen())
        if stats.num_failed_calls != seen.failures:
            self._d_failures.labels(self._model, name).inc(stats.num_failed_calls - seen.failures)
            seen.failures = stats.num_failed_calls
        seconds = stats.draft_seconds + stats.verify_seconds
        if stats.num_draft_steps == seen.drafts and seconds == seen.seconds:
            return
        drafts = stats.num_draft_steps - seen.drafts
        tokens = stats.num_draft_tokens - seen.draft_tokens
        accepted = stats.num_accepted_tokens - seen.accepted
        m, d = self._model, name
        self._drafts.labels(m).inc(drafts)
        self._draft_tokens.labels(m).inc(tokens)
        self._accepted.labels(m).inc(accepted)
        self._d_drafts.labels(m, d).inc(drafts)
        self._d_tokens.labels(m, d).inc(tokens)
        self._d_accepted.labels(m, d).inc(accepted)
        self._d_seconds.labels(m, d).inc(max(0.0, seconds - seen.seconds))
        for pos, count in enumerate(stats.accepted_per_position):
            before = seen.per_position[pos] if pos < len(seen.per_position) else 0
            if count > before:
                self._accepted_pos.labels(m, str(pos)).inc(count - before)
        self._d_rate.labels(m, d).set(stats.acceptance_rate)
        if seconds > 0:
            emitted = stats.num_accepted_tokens + stats.num_draft_steps
            self._d_goodput.labels(m, d).set(emitted / seconds)
        self._seen[name] = _Seen(
            drafts=stats.num_draft_steps,
            draft_tokens=stats.num_draft_tokens,
            accepted=stats.num_accepted_tokens,
            seconds=seconds,
            failures=stats.num_failed_calls,
            per_position=list(stats.accepted_per_position),
        )
