"""Cost measurements: the arithmetic of the timings, percentiles, and the Pareto front."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from pytest_quantgate.backends.base import Backend, GenerationRequest
from pytest_quantgate.core.cost import Cost, measure, percentile
from pytest_quantgate.report.html import pareto_front
from pytest_quantgate.statistics.gate import Verdict
from pytest_quantgate.values.prompts import GenerationSettings


class Clocked(Backend):
    """Takes 10 ms per batch to prefill and 1 ms per batch per token after the first."""

    label = "clocked"

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def generate(self, requests: Sequence[GenerationRequest]) -> list[str]:
        return ["" for _ in requests]

    def describe(self) -> dict[str, Any]:
        return {}

    def timed_generate(self, requests: Sequence[GenerationRequest], new_tokens: int) -> float:
        self.calls.append((len(requests), new_tokens))
        return 0.010 + 0.001 * (new_tokens - 1)


def test_measure_times_every_batch_size_on_the_same_work() -> None:
    backend = Clocked()
    requests = [GenerationRequest(f"p{i}", GenerationSettings()) for i in range(12)]
    cost = measure(backend, requests, batch_sizes=(1, 8, 32), new_tokens=21, repeats=3)
    assert [b.batch_size for b in cost.batches] == [1, 8, 12]  # a batch is never larger than the sample
    for b in cost.batches:
        assert b.first_token_seconds == pytest.approx(0.010)
        assert b.batch_seconds == pytest.approx(0.030)
        assert b.decode_tokens_per_second == pytest.approx(b.batch_size * 20 / 0.020)
    assert cost.latency_p50 == cost.latency_p95 == pytest.approx(0.030)
    assert {n for _, n in backend.calls} == {1, 21}  # a warm-up, then one token or all of them
    assert Cost.from_dict(cost.to_dict()) == cost


def test_measure_refuses_an_empty_sample() -> None:
    with pytest.raises(ValueError, match="at least one prompt"):
        measure(Clocked(), [], batch_sizes=(1,), new_tokens=8)


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [([1.0], 0.95, 1.0), ([1.0, 2.0], 0.5, 1.5), ([4.0, 1.0, 3.0, 2.0], 0.5, 2.5), ([0.0, 10.0], 0.95, 9.5)],
)
def test_percentile_interpolates_between_order_statistics(
    values: list[float], q: float, expected: float
) -> None:
    assert percentile(values, q) == pytest.approx(expected)


def test_the_pareto_front_is_what_nothing_beats_on_both_axes() -> None:
    points = [
        ("ref", 1.0, 0.0, None),
        ("nf4", 0.3, 0.0, Verdict.PASS),  # as good, cheaper: beats the reference
        ("int4", 0.25, -0.05, Verdict.REGRESSED),  # the cheapest: on the front though worse
        ("int8", 0.6, -0.01, Verdict.INCONCLUSIVE),  # dearer and worse than nf4
    ]
    assert pareto_front(points) == {"nf4", "int4"}
