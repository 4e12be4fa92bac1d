"""Live figures for the explorer: metrics sampled in process while someone watches, drawn as small SVGs.

A :class:`Sampler` keeps the last :data:`CAPACITY` samples of what the ``/metrics`` endpoint exports
(recall latency, degraded requests, queue depth, dead letters). It samples when the charts are read,
at most once per :data:`MIN_INTERVAL` seconds, so nothing runs in the background and an idle proxy
pays nothing; a page left open (it polls) builds its own history. Charts are drawn here as SVG
polylines with a title and a text figure beside them, so they read without a script or an image.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

from markupsafe import Markup, escape

from proxy.metrics import Metrics
from proxy.runtime import Runtime

CAPACITY = 120
MIN_INTERVAL = 2.0
WIDTH, HEIGHT = 240, 56


@dataclass(frozen=True, slots=True)
class Sample:
    at: float
    recall_seconds: float
    """Sum of recall durations so far (every outcome)."""
    recalls: float
    degraded: int
    queue_depth: int | None
    dead_letters: int | None


@dataclass(frozen=True, slots=True)
class Series:
    """One chart: its name, unit, the points (seconds ago, value; None where unknown) and the latest value."""

    key: str
    title: str
    unit: str
    points: list[tuple[float, float | None]]

    @property
    def latest(self) -> float | None:
        return next((value for _, value in reversed(self.points) if value is not None), None)

    @property
    def peak(self) -> float | None:
        return max((value for _, value in self.points if value is not None), default=None)


def _recall_totals(metrics: Metrics) -> tuple[float, float]:
    total = count = 0.0
    for family in metrics.recall.collect():
        for sample in family.samples:
            if sample.name.endswith("_sum"):
                total += sample.value
            elif sample.name.endswith("_count"):
                count += sample.value
    return total, count


class Sampler:
    def __init__(self, capacity: int = CAPACITY, min_interval: float = MIN_INTERVAL) -> None:
        self.samples: deque[Sample] = deque(maxlen=capacity)
        self.min_interval = min_interval

    async def sample(self, metrics: Metrics, runtime: Runtime, *, now: float | None = None) -> None:
        """Take a sample unless the last one is fresher than ``min_interval``."""
        now = time.monotonic() if now is None else now
        if self.samples and now - self.samples[-1].at < self.min_interval:
            return
        await metrics.collector.refresh()  # queue depth and dead letters, as a scrape reads them
        total, count = _recall_totals(metrics)
        degraded = sum(value for name, value in runtime.counters.items() if name.startswith("degraded."))
        collector = metrics.collector
        self.samples.append(Sample(now, total, count, degraded, collector.queue_depth, collector.dead_letters))

    def series(self, *, now: float | None = None) -> list[Series]:
        now = time.monotonic() if now is None else now
        pairs = list(zip(list(self.samples)[:-1], list(self.samples)[1:], strict=True))

        def mean_ms(a: Sample, b: Sample) -> float | None:
            n = b.recalls - a.recalls
            return 1000 * (b.recall_seconds - a.recall_seconds) / n if n > 0 else None

        return [
            Series(
                "recall", "Recall latency (mean per interval)", "ms", [(now - b.at, mean_ms(a, b)) for a, b in pairs]
            ),
            Series(
                "degraded",
                "Degraded requests (per interval)",
                "",
                [(now - b.at, b.degraded - a.degraded) for a, b in pairs],
            ),
            Series("queue", "Queue depth", "", [(now - s.at, s.queue_depth) for s in self.samples]),
            Series("dead", "Dead letters", "", [(now - s.at, s.dead_letters) for s in self.samples]),
        ]


def figure(value: float | None, unit: str) -> str:
    if value is None:
        return "no data"
    text = f"{value:.1f}" if unit == "ms" else f"{value:g}"
    return f"{text} {unit}".strip()


def svg(series: Series) -> Markup:
    """The series as a small line chart (newest at the right), labelled for screen readers."""
    known = [(ago, value) for ago, value in series.points if value is not None]
    span = max((ago for ago, _ in series.points), default=0.0) or 1.0
    top = series.peak or 1.0
    coords = " ".join(
        f"{WIDTH * (1 - ago / span):.1f},{HEIGHT - 4 - (HEIGHT - 8) * value / top:.1f}" for ago, value in known
    )
    label = escape(
        f"{series.title}: latest {figure(series.latest, series.unit)}, peak {figure(top if known else None, series.unit)}"
    )
    line = f'<polyline class="line" points="{coords}"/>' if len(known) > 1 else ""
    dot = ""
    if known:
        x, y = coords.split(" ")[-1].split(",")
        dot = f'<circle class="dot" cx="{x}" cy="{y}" r="2.5"/>'
    return Markup(
        f'<svg class="chart" role="img" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" '
        f'aria-labelledby="chart-{series.key}-title"><title id="chart-{series.key}-title">{label}</title>'
        f'<line class="axis" x1="0" y1="{HEIGHT - 4}" x2="{WIDTH}" y2="{HEIGHT - 4}"/>{line}{dot}</svg>'
    )
