"""Metric specifications and the sample families that collectors return.

Collectors declare each metric they can emit as a :class:`MetricSpec` (the catalogue that
``check-rules`` validates rule conditions against and the README tables list), then fill a
:class:`Family` per tick. The exporter renders families; the rules engine queries them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

MetricType = Literal["gauge", "counter", "info"]

LabelValues = tuple[str, ...]


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """Static description of one metric: exposition name, help text, type and label names.

    ``name`` is the full name of the exposed sample: counters end in ``_total``, info metrics
    in ``_info``, and every name starts with ``nodemedic_``.
    """

    name: str
    help: str
    type: MetricType
    labelnames: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.name.startswith("nodemedic_"):
            raise ValueError(f"metric {self.name!r} must start with nodemedic_")
        if self.type == "counter" and not self.name.endswith("_total"):
            raise ValueError(f"counter {self.name!r} must end with _total")
        if self.type == "info" and not self.name.endswith("_info"):
            raise ValueError(f"info metric {self.name!r} must end with _info")

    def family(self) -> Family:
        """Return an empty family for this spec, to be filled with :meth:`Family.add`."""
        return Family(self)


@dataclass(slots=True)
class Family:
    """The samples of one metric collected in one tick.

    Label values are positional, in the order of ``spec.labelnames``; this keeps a family of
    thousands of samples small (a tuple per sample, no dict).
    """

    spec: MetricSpec
    samples: list[tuple[LabelValues, float]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.spec.name

    def add(self, labelvalues: Sequence[str], value: float) -> None:
        """Append one sample; ``labelvalues`` must match ``spec.labelnames`` in length."""
        values = tuple(labelvalues)
        if len(values) != len(self.spec.labelnames):
            raise ValueError(
                f"{self.spec.name}: expected labels {self.spec.labelnames}, got {values}"
            )
        self.samples.append((values, float(value)))

    def series(self) -> Iterator[tuple[Mapping[str, str], float]]:
        """Yield each sample as (label dict, value); used by the rules engine and tests."""
        names = self.spec.labelnames
        for values, value in self.samples:
            yield dict(zip(names, values, strict=True)), value

    def get(self, **labels: str) -> float | None:
        """Return the value of the first sample whose labels include ``labels`` (tests, /status)."""
        for lbls, value in self.series():
            if all(lbls.get(k) == v for k, v in labels.items()):
                return value
        return None
