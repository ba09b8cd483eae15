"""Progress lines of a model's generation, on a fake clock."""

from __future__ import annotations

from pytest_quantgate.core.pool import Progress


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_updates_every_few_seconds_with_step_tokens_and_eta_then_one_final_line() -> None:
    lines: list[str] = []
    clock, tokens = Clock(), [1000]
    progress = Progress(lines.append, "ref", 100, every=5.0, tokens=lambda: tokens[0], clock=clock)
    clock.now, tokens[0] = 2.0, 1400
    progress(10, 100, 1)  # too soon for an update
    clock.now, tokens[0] = 10.0, 3000
    progress(25, 100, 3)
    clock.now, tokens[0] = 40.0, 9000
    progress(100, 100, 6)
    assert lines == [
        "quantgate: ref: generating 25/100 cases (step 3), 10s, 200 tok/s, ~30s left",
        "quantgate: ref: 100 cases generated in 40.0s (2.5 cases/s, 200 tok/s, up to 6 steps)",
    ]


def test_quiet_keeps_only_the_last_line_and_no_tokens_without_a_counter() -> None:
    lines: list[str] = []
    clock = Clock()
    progress = Progress(lines.append, "q", 10, every=1.0, quiet=True, clock=clock)
    for done in range(1, 11):
        clock.now = float(done)
        progress(done, 10)
    assert lines == ["quantgate: q: 10 cases generated in 10.0s (1.0 cases/s)"]
    assert all("\r" not in line for line in lines)
