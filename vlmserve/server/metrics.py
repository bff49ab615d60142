"""Prometheus metrics: what the server counted per request, plus the engine's state read at scrape time.

Each app gets its own registry, so several apps (tests) never share counters.
"""

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from vlmserve.engine.llm_engine import EngineStats

TOKEN_GAP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0)


class Metrics:
    """`stats`: the engine's stats() (AsyncLLMEngine.stats), called at each scrape, while a step may run."""

    def __init__(self, stats: Callable[[], EngineStats]):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("vlmserve_requests", "HTTP requests by endpoint and status code",
                                ["endpoint", "status"], registry=r)
        self.prompt_tokens = Counter("vlmserve_prompt_tokens", "prompt tokens of finished requests", registry=r)
        self.completion_tokens = Counter("vlmserve_completion_tokens", "generated tokens", registry=r)
        self.images = Counter("vlmserve_images", "images in finished requests", registry=r)
        self.cost = Counter("vlmserve_cost_usd", "cost in USD by API key (a sha256 prefix, never the key)",
                            ["api_key"], registry=r)
        self.time_to_first_token = Histogram("vlmserve_time_to_first_token_seconds",
                                             "arrival to the first generated token", buckets=LATENCY_BUCKETS,
                                             registry=r)
        self.inter_token_latency = Histogram(
            "vlmserve_inter_token_latency_seconds", "gap between a request's successive outputs with new tokens (a "
            "stream's chunks)", buckets=TOKEN_GAP_BUCKETS, registry=r)
        self.time_per_output_token = Histogram(
            "vlmserve_time_per_output_token_seconds", "per request: first to last token over the tokens after the "
            "first", buckets=TOKEN_GAP_BUCKETS, registry=r)
        self.e2e_latency = Histogram("vlmserve_e2e_request_latency_seconds", "arrival to the last token",
                                     buckets=LATENCY_BUCKETS, registry=r)
        r.register(_EngineCollector(stats))

    def record_request(self, *, prompt_tokens: int, completion_tokens: int, num_images: int, cost: float,
                       key: str, latency_s: float) -> None:
        self.prompt_tokens.inc(prompt_tokens)
        self.completion_tokens.inc(completion_tokens)
        self.images.inc(num_images)
        self.cost.labels(api_key=key).inc(cost)
        self.e2e_latency.observe(latency_s)


class _EngineCollector:
    """Gauges and cache counters from the engine's stats(); they count sequences (n>1 requests count n)."""

    def __init__(self, stats: Callable[[], EngineStats]):
        self.stats = stats

    def collect(self):
        stats = self.stats()
        yield _gauge("vlmserve_num_requests_running", "sequences being generated", stats.num_running)
        yield _gauge("vlmserve_num_requests_waiting", "sequences waiting for a slot", stats.num_waiting)
        yield _gauge("vlmserve_kv_cache_usage_perc", "fraction of KV-cache blocks in use", stats.kv_cache_usage)
        yield _counter("vlmserve_num_preemptions", "sequences preempted for lack of KV blocks", stats.num_preemptions)
        yield _counter("vlmserve_prefix_cache_queries", "prompt tokens looked up in the prefix cache",
                       stats.prefix_cache_queried_tokens)
        yield _counter("vlmserve_prefix_cache_hits", "prompt tokens found in the prefix cache",
                       stats.prefix_cache_hit_tokens)
        yield _counter("vlmserve_encoder_cache_queries", "images looked up in the encoder cache",
                       stats.encoder_cache_queried_images)
        yield _counter("vlmserve_encoder_cache_hits", "images whose cross-attention K/V were cached",
                       stats.encoder_cache_hit_images)
        yield _counter("vlmserve_images_encoded", "images run through the vision encoder", stats.num_images_encoded)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)
