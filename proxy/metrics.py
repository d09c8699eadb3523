"""The proxy's Prometheus families, and the bound on its per-name series.

Per-name series (connections, bytes each way) are what an owner wants to see, and what
could grow without end: labels come only from the route table (never from a client's
server name), at most ``MAX_NAMES`` names get their own series per process, and the
rest share ``name="_other"``. When the cap is reached, the series of names that have
left the route table are dropped first (checked again only after the table changed),
so a gateway whose names come and go keeps a current set. ``_`` cannot start a name,
so ``_other`` and ``_catch_all`` never collide with one.

What is open now (pairs per name, tunnel nodes per name) is read from the engine when
scraped rather than kept in gauges: nothing on the hot path, and no series outlives the
name it describes. Those families have the same bound: ``MAX_NAMES`` labels, then ``_other``.

The counters every connection touches (its outcome, its name's connections and bytes) are
plain integers, turned into families at each scrape: ``Counter.inc`` is four Python calls
and a lock, and every connection made four of them (~10 µs of the ~950 µs a new TLS
connection costs the proxy, measured in bench/README.md).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Iterator
from typing import Final, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from proxy.routes import RouteTable
from tunnel.gateway import Tunnels

MAX_NAMES: Final = 1000
OTHER: Final = "_other"
CATCH_ALL: Final = "_catch_all"


class Live(Protocol):
    """What the engine holds that the scrape-time families read."""

    per_name: dict[str, int]  # label -> spliced pairs open now
    tunnels: Tunnels | None


class ProxyMetrics:
    def __init__(self, registry: CollectorRegistry, table: RouteTable, live: Live | None = None,
                 max_names: int = MAX_NAMES) -> None:
        """``live``: the engine, read at each scrape (None: nothing is ever open)."""
        self.table = table
        self.live = live
        self.max_names = max_names
        self.open = Gauge("webgateway_proxy_open_connections",
                          "Client connections open now (HTTPS and HTTP)", registry=registry)
        self.handshake_failures = Counter(
            "webgateway_proxy_handshake_failures",
            "Connections that ended before a ClientHello was read or TLS was set up, by reason",
            ["reason"], registry=registry)
        self.backend_failures = Counter(
            "webgateway_proxy_backend_failures",
            "Backend connects that failed (policy: refused by the backend policy), by reason",
            ["reason"], registry=registry)
        self.http = Counter("webgateway_proxy_http_requests",
                            "Plain-HTTP requests (port 80) by outcome", ["outcome"],
                            registry=registry)
        registry.register(_LiveFamilies(self))
        #: outcome -> HTTPS connections that ended so
        self.outcomes: dict[str, int] = {}
        #: label -> [connections ended, bytes in, bytes out]
        self.names: dict[str, list[int]] = {}
        self._pruned_at = -1

    def outcome(self, what: str) -> None:
        outcomes = self.outcomes
        outcomes[what] = outcomes.get(what, 0) + 1

    def name_done(self, label: str, bytes_in: int, bytes_out: int) -> None:
        """One finished connection of ``label`` (a route table label or ``CATCH_ALL``)."""
        series = self.names.get(label) or self._series(label)
        series[0] += 1
        series[1] += bytes_in
        series[2] += bytes_out

    def name_traffic(self, label: str, bytes_in: int, bytes_out: int) -> None:
        """Bytes an open connection of ``label`` carried since it was last counted."""
        series = self.names.get(label) or self._series(label)
        series[1] += bytes_in
        series[2] += bytes_out

    def _series(self, label: str) -> list[int]:
        names = self.names
        if len(names) >= self.max_names + (OTHER in names):
            self._prune()
            if len(names) >= self.max_names + (OTHER in names):
                label = OTHER
                if label in names:
                    return names[label]
        series = names[label] = [0, 0, 0]
        return series

    def _prune(self) -> None:
        if self._pruned_at == self.table.serial:
            return
        self._pruned_at = self.table.serial
        names = self.table.names
        for label in [k for k in self.names if k not in names and k not in (OTHER, CATCH_ALL)]:
            del self.names[label]


class _LiveFamilies:
    """The families built at each scrape: the counters kept as integers, and what is open
    now, from the engine's state."""

    def __init__(self, metrics: ProxyMetrics) -> None:
        self.metrics = metrics

    def _bounded(self, values: Iterable[tuple[str, float]],
                 combine: Callable[[float, float], float] = operator.add) -> dict[str, float]:
        """At most ``max_names`` labels of their own; the rest combined under ``_other``."""
        out: dict[str, float] = {}
        for label, value in values:
            key = label if label in out or len(out) < self.metrics.max_names else OTHER
            out[key] = combine(out[key], value) if key in out else value
        return out

    def collect(self) -> Iterator[Metric]:
        metrics = self.metrics
        connections = CounterMetricFamily(
            "webgateway_proxy_connections", "HTTPS connections by outcome, counted when they end",
            labels=["outcome"])
        for outcome, ended in metrics.outcomes.items():
            connections.add_metric([outcome], ended)
        yield connections
        name_connections = CounterMetricFamily(
            "webgateway_proxy_name_connections",
            "Connections spliced to a name's backend, counted when they end", labels=["name"])
        name_bytes = CounterMetricFamily(
            "webgateway_proxy_name_bytes",
            "Bytes a name's connections carried (in: from clients), every 10 s while open",
            labels=["name", "direction"])
        for label, (ended, bytes_in, bytes_out) in metrics.names.items():
            name_connections.add_metric([label], ended)
            name_bytes.add_metric([label, "in"], bytes_in)
            name_bytes.add_metric([label, "out"], bytes_out)
        yield name_connections
        yield name_bytes
        live = metrics.live
        per_name, tunnels = (live.per_name, live.tunnels) if live is not None else ({}, None)
        open_now = GaugeMetricFamily(
            "webgateway_proxy_name_open_connections",
            "Connections spliced to a name's backend open now", labels=["name"])
        for label, n in self._bounded(per_name.items()).items():
            open_now.add_metric([label], n)
        yield open_now
        nodes = tunnels.nodes() if tunnels is not None else {}
        yield GaugeMetricFamily("webgateway_tunnels_connected",
                                "Reverse-tunnel connections from nodes open now",
                                value=tunnels.connections() if tunnels is not None else 0)
        count = GaugeMetricFamily("webgateway_tunnel_nodes",
                                  "Nodes connected per tunnel name", labels=["name"])
        for label, n in self._bounded((k, v[0]) for k, v in nodes.items()).items():
            count.add_metric([label], n)
        yield count
        since = GaugeMetricFamily(
            "webgateway_tunnel_since_timestamp_seconds",
            "Per tunnel name, when its longest-connected node connected (Unix time)",
            labels=["name"])
        for label, t in self._bounded(((k, v[1]) for k, v in nodes.items()), min).items():
            since.add_metric([label], t)
        yield since
