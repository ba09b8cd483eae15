"""Simulated level and power of the gate on graded scores (checks that return a number in [0, 1]).

A graded slice is tested on the rounded soft counts of its score
differences (statistics.gate.graded_counts), with the pass/fail gate's exact
tests. This script draws paired scores from a grid of joint distributions
whose true mean difference is exactly the margin δ and counts

1. false alarms: REGRESSED when the true drop is δ (H0 of REGRESSED holds);
2. false passes: PASS or IMPROVED when the true drop is δ (H0 of PASS holds);

for the gate as implemented (``evaluate``, one slice, no ALL row) and, for
comparison, for the plain paired t-test (mean difference against Student's
t with n − 1 degrees of freedom) that the gate does not use. Then the power:
REGRESSED at a true drop of 4δ, PASS at no drop.

Each rate is a Monte Carlo estimate; ± is two standard errors,
``2·√(r(1 − r)/reps)`` (at least ``2·√(α(1 − α)/reps)`` for a rate of 0).
Writes Markdown to stdout (the section of docs/verification.md).

    python tools/verify_graded.py [--reps 2000] [--quick]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats as sps

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pytest_quantgate.statistics.gate import GateSettings, SliceOutcomes, Verdict, evaluate

ALPHA = 0.05
Draw = Callable[[np.random.Generator, int, float], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Family:
    """A joint distribution of (reference, candidate) scores with mean difference ``drop``."""

    name: str
    draw: Draw


def _three_level(rng: np.random.Generator, n: int, drop: float) -> tuple[np.ndarray, np.ndarray]:
    # Scores in {0, 0.5, 1}; the candidate repeats the reference's score
    # except on a fraction ψ = 0.2 of cases, where it draws its own.
    levels = np.array([0.0, 0.5, 1.0])
    ref = rng.choice(levels, size=n, p=[0.2, 0.3, 0.5])
    psi = 0.2
    target = 0.65 - drop / psi  # the disturbed cases' mean score
    own = _levels_with_mean(rng, n, target)
    cand = np.where(rng.random(n) < psi, own, ref)
    return ref, cand


def _levels_with_mean(rng: np.random.Generator, n: int, mean: float) -> np.ndarray:
    """Draws from {0, 0.5, 1} with P(0.5) = 0.3 and the given mean."""
    p1 = mean - 0.15
    return rng.choice(np.array([0.0, 0.5, 1.0]), size=n, p=[0.7 - p1, 0.3, p1])


def _near_binary(rng: np.random.Generator, n: int, drop: float) -> tuple[np.ndarray, np.ndarray]:
    # Mostly pass/fail: the reference passes 80 % of cases, 5 % score 0.5.
    # The candidate fails a passed case with probability drop/0.8, so that
    # the mean difference is drop, and keeps every other score.
    ref = rng.choice(np.array([0.0, 0.5, 1.0]), size=n, p=[0.15, 0.05, 0.8])
    q = drop / 0.8
    cand = np.where((ref == 1.0) & (rng.random(n) < q), 0.0, ref)
    return ref, cand


def _all_or_nothing(rng: np.random.Generator, n: int, drop: float) -> tuple[np.ndarray, np.ndarray]:
    # Pass/fail scores: the gate's pass/fail path. Regressions at rate
    # 0.05 + drop, improvements at 0.05.
    u = rng.random(n)
    ref = np.where(u < 0.05 + drop, 1.0, np.where(u < 0.1 + drop, 0.0, (rng.random(n) < 0.7).astype(float)))
    cand = np.where(u < 0.05 + drop, 0.0, np.where(u < 0.1 + drop, 1.0, ref))
    return ref, cand


def _token_f1(rng: np.random.Generator, n: int, drop: float) -> tuple[np.ndarray, np.ndarray]:
    # Continuous and skewed, like token F1: the reference ~ Beta(4, 1); on
    # 25 % of cases the candidate loses a Beta(2, 2)-distributed share of
    # it, scaled so that the mean loss is drop. Elsewhere it scores the same.
    ref = rng.beta(4.0, 1.0, size=n)
    psi = 0.25
    loss = drop / (psi * 0.8)  # E[ref] = 0.8; mean fraction lost on a disturbed case
    keep = 1.0 - 2.0 * loss * rng.beta(2.0, 2.0, size=n)
    cand = np.where(rng.random(n) < psi, ref * keep, ref)
    return ref, cand


def _rare_total_loss(rng: np.random.Generator, n: int, drop: float) -> tuple[np.ndarray, np.ndarray]:
    # Identical scores but for rare complete losses of a fractional score:
    # the atom at 0 with a long tail, where a t-test on few cases is fooled
    # by samples with no loss at all.
    ref = rng.choice(np.array([0.5, 0.75, 1.0]), size=n, p=[0.2, 0.3, 0.5])
    q = drop / float(np.dot([0.5, 0.75, 1.0], [0.2, 0.3, 0.5]))
    cand = np.where(rng.random(n) < q, 0.0, ref)
    return ref, cand


FAMILIES = (
    Family("{0, ½, 1}, 20 % redrawn", _three_level),
    Family("near pass/fail (5 % at ½)", _near_binary),
    Family("all-or-nothing", _all_or_nothing),
    Family("token-F1-like Beta(4, 1)", _token_f1),
    Family("rare total loss", _rare_total_loss),
)


def t_verdicts(ref: np.ndarray, cand: np.ndarray, delta: float) -> tuple[bool, bool]:
    """(REGRESSED, PASS or IMPROVED) of the plain paired t-test at level α."""
    d = ref - cand
    n = d.size
    mean = float(d.mean())
    se = float(d.std(ddof=1)) / math.sqrt(n)
    crit = float(sps.t.isf(ALPHA, n - 1))
    if se == 0.0:
        return mean > delta, mean < delta
    regressed = (mean - delta) / se > crit
    improved = mean / se < -crit
    return regressed, improved or mean + crit * se < delta


def gate_verdict(ref: np.ndarray, cand: np.ndarray, delta: float) -> Verdict:
    outcomes = SliceOutcomes(
        "s",
        tuple(bool(x) for x in ref == 1.0),
        tuple(bool(x) for x in cand == 1.0),
        tolerance=delta,
        reference_scores=tuple(float(x) for x in ref),
        candidate_scores=tuple(float(x) for x in cand),
    )
    return evaluate([outcomes], None, GateSettings(alpha=ALPHA, tolerance=delta, plan=False))[0].verdict


def rates(family: Family, n: int, delta: float, drop: float, reps: int, seed: int) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    counts = dict.fromkeys(("gate_reg", "gate_pass", "t_reg", "t_pass"), 0)
    for _ in range(reps):
        ref, cand = family.draw(rng, n, drop)
        verdict = gate_verdict(ref, cand, delta)
        counts["gate_reg"] += verdict is Verdict.REGRESSED
        counts["gate_pass"] += verdict in (Verdict.PASS, Verdict.IMPROVED)
        t_reg, t_pass = t_verdicts(ref, cand, delta)
        counts["t_reg"] += t_reg
        counts["t_pass"] += t_pass
    return {k: v / reps for k, v in counts.items()}


def pm(rate: float, reps: int) -> str:
    se = math.sqrt(max(rate * (1 - rate), ALPHA * (1 - ALPHA) if rate == 0 else 0.0) / reps)
    return f"{rate:.4f} ± {2 * se:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=2000)
    parser.add_argument("--quick", action="store_true", help="n = 20 and 300, δ = 0.05 only")
    args = parser.parse_args()
    ns = (20, 300) if args.quick else (10, 20, 50, 100, 300, 1000)
    os.nice(5)
    margins = (0.05,) if args.quick else (0.02, 0.05)
    started = time.perf_counter()
    load = os.getloadavg()[0]
    print(f"{args.reps} draws per row; load average at start {load:.2f} on {os.cpu_count()} cores.\n")
    print("### Level at the margin (true mean drop = δ)\n")
    print("| scores | n | δ | gate REGRESSED | gate PASS | t-test REGRESSED | t-test PASS |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    worst = {"gate_reg": 0.0, "gate_pass": 0.0, "t_reg": 0.0, "t_pass": 0.0}
    seed = 0
    for family in FAMILIES:
        for delta in margins:
            for n in ns:
                seed += 1
                r = rates(family, n, delta, delta, args.reps, seed)
                for key in worst:
                    worst[key] = max(worst[key], r[key])
                cells = " | ".join(
                    pm(r[key], args.reps) for key in ("gate_reg", "gate_pass", "t_reg", "t_pass")
                )
                print(f"| {family.name} | {n} | {delta:g} | {cells} |", flush=True)
    print(
        f"\nLargest: gate REGRESSED {worst['gate_reg']:.4f}, gate PASS {worst['gate_pass']:.4f}; "
        f"t-test REGRESSED {worst['t_reg']:.4f}, t-test PASS {worst['t_pass']:.4f} (α = {ALPHA}).\n"
    )
    print("### Power\n")
    print("| scores | n | δ | gate REGRESSED at drop 4δ | t-test | gate PASS at drop 0 | t-test |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    delta = 0.02
    for family in FAMILIES:
        for n in (100, 300, 1000) if not args.quick else (300,):
            seed += 1
            hit = rates(family, n, delta, 4 * delta, args.reps // 2, seed)
            seed += 1
            ok = rates(family, n, delta, 0.0, args.reps // 2, seed)
            print(
                f"| {family.name} | {n} | {delta:g} | {hit['gate_reg']:.3f} | {hit['t_reg']:.3f} | "
                f"{ok['gate_pass']:.3f} | {ok['t_pass']:.3f} |",
                flush=True,
            )
    print(f"\nTook {time.perf_counter() - started:.0f} s.")


if __name__ == "__main__":
    main()
