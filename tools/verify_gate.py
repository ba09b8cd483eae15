"""Exact checks of the gate's statistics, at sizes too large for the test suite.

Computes, by summing over every table rather than by simulation:

1. the false-alarm rate of REGRESSED at the H0 boundary (true drop = δ) for
   n from 10 to 5,000, several margins δ and discordance rates ψ;
2. that REGRESSED is nested across margins for every table up to n = 150
   (REGRESSED at δ implies REGRESSED at every smaller margin checked; each
   margin's region computed on its own), and that each rejection region is
   ``b ≥ r(m)`` for each discordant count m;

and, by simulation (clusters have no exact enumeration), the false-alarm
rate of clustered slices with 10–20 clusters.

Writes a Markdown report (default ``docs/verification.md``). Takes tens of
minutes on two cores; ``--quick`` runs a subset in a couple of minutes.

Up to n = 60 the size of the gate's own (nested) test is summed over its
rejection region, enumerated table by table. Above, the size of the plain
exact test at δ is computed instead: the nested test rejects a subset of its
tables, so its size is at most that. There the region of each discordant
count m is taken to be ``b ≥ r(m)``, found by bisection, which check 2
confirms for every table up to n = 150.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from scipy import stats as sps

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pytest_quantgate.statistics import stats
from pytest_quantgate.statistics.gate import GateSettings, SliceOutcomes, evaluate

ALPHA = 0.05
SIZE_NS = (10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 1000, 2000, 2001, 2200, 3000, 5000)
MARGINS = (0.005, 0.01, 0.02, 0.05, 0.1)
NEST_MARGINS = (0.0, 0.005, 0.01, 0.02, 0.05)


def psis(delta: float) -> tuple[float, ...]:
    """Discordance rates at the boundary: no improvements (ψ = δ), some, many."""
    return tuple(sorted({delta, 1.5 * delta, 2 * delta, 0.1, 0.3} - {x for x in (0.1, 0.3) if x <= delta}))


def size_by_threshold(n: int, delta: float, psi: float) -> float:
    """P(plain exact test rejects) at p10 = (ψ+δ)/2, p01 = (ψ−δ)/2, one discordant count at a time."""
    p10, _p01 = (psi + delta) / 2, (psi - delta) / 2
    m_lo, m_hi = stats._support(n, psi)
    share = p10 / psi
    total = 0.0
    r = 0
    for m in range(m_lo, m_hi + 1):
        # r(m) is non-decreasing in m in practice: start from the last one and
        # fall back to a full bisection when the guess is wrong.
        def rejects(b: int, m: int = m) -> bool:
            return stats.regression_pvalue(b, m - b, n, delta, nested=False) < ALPHA

        lo, hi = 0, m + 1
        guess = min(r, m + 1)
        if guess <= m and rejects(guess) and (guess == 0 or not rejects(guess - 1)):
            lo = hi = guess
        while lo < hi:
            mid = (lo + hi) // 2
            if rejects(mid):
                hi = mid
            else:
                lo = mid + 1
        r = lo
        total += float(sps.binom.pmf(m, n, psi) * sps.binom.sf(r - 1, m, share))
    return total


def size_rows(
    ns: tuple[int, ...], margins: tuple[float, ...]
) -> Iterator[tuple[int, float, float, float, str]]:
    for n in ns:
        for delta in margins:
            for psi in psis(delta):
                p10, p01 = (psi + delta) / 2, (psi - delta) / 2
                if n <= 60:
                    size = stats.region_probability(stats.regression_region(n, delta, ALPHA), p10, p01)
                    how = "gate (nested), every table"
                else:
                    size = size_by_threshold(n, delta, psi)
                    how = "plain exact test at δ, b ≥ r(m)"
                yield n, delta, psi, size, how


def nested_regions(n: int, margins: tuple[float, ...]) -> list[np.ndarray]:
    """The gate's REGRESSED region of n cases at each margin, each computed on its own."""
    return [stats.regression_region(n, margin, ALPHA) for margin in margins]


def nesting(max_n: int, margins: tuple[float, ...]) -> tuple[int, int, list[str]]:
    """(tables checked, rejections, violations) of nesting and of the b ≥ r(m) shape."""
    problems: list[str] = []
    tables = rejections = 0
    for n in range(1, max_n + 1):
        regions = nested_regions(n, margins)
        tables += (n + 1) * (n + 2) // 2
        rejections += int(regions[-1].sum())
        for (d1, r1), (d2, r2) in itertools.pairwise(zip(margins, regions, strict=True)):
            bad = np.argwhere(r2 & ~r1)
            for b, c in bad[:3]:
                problems.append(f"n={n} (b, c)=({b}, {c}): REGRESSED at δ={d2} but not at δ={d1}")
        for d, region in zip(margins, regions, strict=True):
            for m in range(n + 1):
                row = np.array([region[b, m - b] for b in range(m + 1)])
                if row.any() and not row[np.argmax(row) :].all():
                    problems.append(f"n={n} δ={d} m={m}: the rejected b are not a suffix")
        print(f"nesting: n={n} done, {len(problems)} problems", flush=True)
    return tables, rejections, problems


def cluster_false_alarms(clusters: int, size: int, icc: float, reps: int, seed: int) -> float:
    """Simulated REGRESSED rate of one clustered slice whose true drop is exactly δ."""
    rng = np.random.default_rng(seed)
    settings = GateSettings(alpha=ALPHA, tolerance=0.02, plan=False)
    delta = settings.tolerance
    psi = 0.2
    p10, p01 = (psi + delta) / 2, (psi - delta) / 2
    hits = 0
    ids = tuple(f"k{i // size}" for i in range(clusters * size))
    for _ in range(reps):
        # A shared cluster effect on the outcome category: with probability
        # icc the whole cluster takes one category, else each case its own.
        cats = np.empty(clusters * size, dtype=int)
        for k in range(clusters):
            block = slice(k * size, (k + 1) * size)
            if rng.random() < icc:
                cats[block] = rng.choice(3, p=[p10, p01, 1 - psi])
            else:
                cats[block] = rng.choice(3, size=size, p=[p10, p01, 1 - psi])
        ref = tuple(bool(x != 1) for x in cats)  # category 1: reference fails, candidate passes
        cand = tuple(bool(x != 0) for x in cats)  # category 0: reference passes, candidate fails
        row = evaluate([SliceOutcomes("s", ref, cand, clusters=ids)], None, settings)[0]
        hits += row.verdict.value == "REGRESSED"
    return hits / reps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/verification.md"))
    parser.add_argument("--quick", action="store_true", help="a subset, for a smoke run")
    parser.add_argument(
        "--sections",
        default="size,nesting,clusters",
        help="comma-separated subset of size, nesting, clusters (default: all three)",
    )
    args = parser.parse_args()
    sections = set(args.sections.split(","))
    started = time.perf_counter()
    lines = [
        "# Exact checks of the gate's statistics",
        "",
        f"Written by `python tools/verify_gate.py` (α = {ALPHA}). Exact sums over every table",
        "unless marked otherwise; see the script's docstring for the method.",
        "",
    ]
    if "size" in sections:
        lines += [
            "## 1. False-alarm rate of REGRESSED at the H0 boundary (true drop = δ)",
            "",
            "| n | δ | ψ | size | how |",
            "|---:|---:|---:|---:|---|",
        ]
        ns = (10, 50, 150, 2001, 5000) if args.quick else SIZE_NS
        margins = (0.02,) if args.quick else MARGINS
        worst = 0.0
        for n, delta, psi, size, how in size_rows(ns, margins):
            worst = max(worst, size)
            lines.append(f"| {n} | {delta:g} | {psi:g} | {size:.5f} | {how} |")
            print(lines[-1], flush=True)
        lines += ["", f"Largest: **{worst:.5f}** (α = {ALPHA}).", ""]
    if "nesting" in sections:
        max_n = 40 if args.quick else 150
        tables, rejections, problems = nesting(max_n, NEST_MARGINS)
        lines += [
            "## 2. REGRESSED is nested across margins",
            "",
            f"Every table with n ≤ {max_n} ({tables:,} tables), margins {', '.join(map(str, NEST_MARGINS))}:",
            f"{len(problems)} violations of nesting or of the `b ≥ r(m)` shape"
            f" ({rejections:,} tables REGRESSED at the largest margin).",
            "",
            *[f"- {p}" for p in problems[:20]],
            "",
        ]
    if "clusters" in sections:
        lines += [
            "## 3. Clustered slices: simulated false-alarm rate (clusters of 5, ICC 1/3, ψ = 0.2)",
            "",
            "| clusters | rate | ± 2 SE |",
            "|---:|---:|---:|",
        ]
        reps = 2000 if args.quick else 20000
        for clusters in (10, 12, 15, 20):
            rate = cluster_false_alarms(clusters, 5, 1 / 3, reps, seed=clusters)
            se = math.sqrt(max(rate * (1 - rate), 1e-12) / reps)
            lines.append(f"| {clusters} | {rate:.4f} | {2 * se:.4f} |")
            print(lines[-1], flush=True)
        lines.append("")
    lines += [f"Took {time.perf_counter() - started:.0f} s.", ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
