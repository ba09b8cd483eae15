"""Exact checks of the gate's statistics, at sizes too large for the test suite.

Computes, by summing over every table rather than by simulation:

1. the false-alarm rate of REGRESSED at the H0 boundary (true drop = δ) for
   n from 10 to 5,000, several margins δ and discordance rates ψ;
2. that REGRESSED is nested across margins for every table up to n = 150
   (REGRESSED at δ implies REGRESSED at every smaller margin checked; each
   margin's region computed on its own), and that each rejection region is
   ``b ≥ r(m)`` for each discordant count m;

and, by simulation (clusters have no exact enumeration), the false-alarm
rate of clustered slices with 10–20 clusters. Then (sections ``search``,
``pass`` and ``agreement``):

4. how far the search for the Berger–Boos maximum over ψ (a coarse grid with
   the edge ψ = |δ| and the restricted MLE, refined around every peak) falls
   below a 400-point search, over every table of n cases, both tails;
5. the size of PASS, P(PASS or IMPROVED | true drop = δ), the risk of
   shipping a damaged candidate: every table's gate decision summed up to
   n = 40; above, the non-inferiority test at δ (a superset of PASS, whose
   bound inverts it) or McNemar's improvement test, one discordant count m
   at a time with the region ``b ≤ s(m)`` (its shape checked up to n = 40);
6. that clustered rows pass exactly when their non-inferiority p-value (the
   same t reference) is below α, over thousands of random clustered slices.

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
from typing import Literal

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
    """Discordance rates at the boundary: no improvements (ψ = δ, always), some, many."""
    return tuple(sorted({delta, 1.5 * delta, 2 * delta} | {x for x in (0.1, 0.3) if x > delta}))


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


def search_shortfall(n: int, delta: float, upper: bool, points: int = 400) -> tuple[float, tuple[int, int]]:
    """The most any table's p-value falls below a search over ``points`` evenly spaced ψ (plus its own)."""
    bs, cs = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")
    keep = bs + cs <= n
    b, c = bs[keep].astype(np.int64), cs[keep].astype(np.int64)
    search = stats._pvalues_of(n, delta, b, c, upper)
    z = stats._z(b.astype(float), c.astype(float), float(n), delta)
    slack = stats._TIE_TOL * np.maximum(1.0, np.abs(z))
    cut = z - slack if upper else z + slack
    grid = stats._z_grid(n, delta)
    side: Literal["left", "right"] = "left" if upper else "right"
    worst, where = 0.0, (0, 0)
    for i in range(b.size):
        first = np.array([np.searchsorted(grid[m, : m + 1], cut[i], side=side) for m in range(n + 1)])
        lo, hi = stats._psi_interval(int(b[i] + c[i]), n)
        own = stats.psi_points(int(b[i]), int(c[i]), n, delta)
        psis = np.unique(np.concatenate([np.linspace(lo, hi, points), own]))
        dense = min(float(stats._tails_full(n, delta, upper, first, psis).max()) + stats.BB_GAMMA, 1.0)
        if dense - search[i] > worst:
            worst, where = float(dense - search[i]), (int(b[i]), int(c[i]))
    return worst, where


def ships_region(n: int, delta: float) -> np.ndarray:
    """Tables the gate ships at margin δ: PASS (bound below δ) or IMPROVED (McNemar's lower test)."""
    improved = stats._mcnemar_table(n).T < ALPHA
    return stats.pass_region(n, delta, ALPHA) | improved


def pass_size_by_threshold(n: int, delta: float, psi: float) -> float:
    """P(non-inferiority test at δ or McNemar's improvement test rejects) at the boundary, b ≤ s(m) per m."""
    p10 = (psi + delta) / 2
    m_lo, m_hi = stats._support(n, psi)
    share = p10 / psi
    total = 0.0
    s = 0
    for m in range(m_lo, m_hi + 1):
        # The largest b in [-1, m] rejected: non-inferior at δ, or improved.
        def rejects(b: int, m: int = m) -> bool:
            return stats.noninferiority_rejects(b, m - b, n, delta, ALPHA) or (
                m > 0 and float(sps.binom.cdf(b, m, 0.5)) < ALPHA
            )

        lo, hi = -1, m
        guess = min(s, m)
        if guess >= 0 and rejects(guess) and (guess == m or not rejects(guess + 1)):
            lo = hi = guess
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if rejects(mid):
                lo = mid
            else:
                hi = mid - 1
        s = lo
        if s >= 0:
            total += float(sps.binom.pmf(m, n, psi) * sps.binom.cdf(s, m, share))
    return total


def pass_rows(
    ns: tuple[int, ...], margins: tuple[float, ...]
) -> Iterator[tuple[int, float, float, float, str]]:
    for n in ns:
        for delta in margins:
            region = ships_region(n, delta) if n <= 40 else None
            for psi in psis(delta):
                if region is not None:
                    size = stats.region_probability(region, (psi + delta) / 2, (psi - delta) / 2)
                    how = "gate (PASS or IMPROVED), every table"
                else:
                    size = pass_size_by_threshold(n, delta, psi)
                    how = "non-inferiority test at δ or improvement, b ≤ s(m)"
                yield n, delta, psi, size, how


def pass_shape(max_n: int, margins: tuple[float, ...]) -> tuple[int, list[str]]:
    """(tables, problems): PASS ⊆ {non-inferiority p-value at δ < α}; each m's shipped tables b ≤ s(m)."""
    problems: list[str] = []
    tables = 0
    for n in range(1, max_n + 1):
        for delta in margins:
            region = ships_region(n, delta)
            tables += (n + 1) * (n + 2) // 2
            for b, c in np.argwhere(stats.pass_region(n, delta, ALPHA)):
                if not stats.noninferiority_rejects(int(b), int(c), n, delta, ALPHA):
                    problems.append(f"n={n} δ={delta} (b, c)=({b}, {c}): PASS but p-value at δ ≥ α")
            for m in range(n + 1):
                row = np.array([region[b, m - b] for b in range(m + 1)])
                if row.any() and not row[: int(np.nonzero(row)[0].max()) + 1].all():
                    problems.append(f"n={n} δ={delta} m={m}: the shipped b are not a prefix")
        print(f"pass shape: n={n} done, {len(problems)} problems", flush=True)
    return tables, problems


def clustered_agreement(rows: int, seed: int) -> tuple[int, int, list[str]]:
    """(rows, floored to a design effect of 1, disagreements) of PASS against the t p-value."""
    rng = np.random.default_rng(seed)
    settings = GateSettings(alpha=ALPHA, plan=False)
    clipped = 0
    problems: list[str] = []
    for _ in range(rows):
        size = int(rng.choice([2, 5, 8]))
        n = size * int(rng.integers(5, 41))
        b, c = (int(x) for x in rng.integers(0, max(2, n // 8), size=2))
        if b + c > n:
            continue
        delta = float(rng.choice([0.02, 0.05, 0.1]))
        cats = rng.permutation(np.array([0] * b + [1] * c + [2] * (n - b - c)))
        outcomes = SliceOutcomes(
            "s",
            tuple(bool(x != 1) for x in cats),
            tuple(bool(x != 0) for x in cats),
            clusters=tuple(f"k{i // size}" for i in range(n)),
            tolerance=delta,
        )
        (row,) = evaluate([outcomes], None, settings)
        clipped += row.design_effect == 1.0
        p = stats.noninferiority_pvalue(
            b, c, n, delta, method="normal", deff=row.design_effect, df=n // size - 1
        )
        if (row.upper < delta) != (p < ALPHA):
            problems.append(f"(b, c, n, δ)=({b}, {c}, {n}, {delta}): bound {row.upper:.5f}, p-value {p:.5f}")
    return rows, clipped, problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/verification.md"))
    parser.add_argument("--quick", action="store_true", help="a subset, for a smoke run")
    parser.add_argument(
        "--sections",
        default="size,nesting,clusters,search,pass,agreement",
        help="comma-separated subset of size, nesting, clusters, search, pass, agreement (default: all)",
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
        ns: tuple[int, ...] = (10, 50, 150, 2001, 5000) if args.quick else tuple(SIZE_NS)
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
    if "search" in sections:
        lines += [
            "## 4. The search over ψ against a 400-point search, every table",
            "",
            "| n | δ | tail | largest shortfall | at (b, c) |",
            "|---:|---:|---|---:|---|",
        ]
        worst = 0.0
        for n in (10, 20) if args.quick else (10, 20, 30, 50):
            for delta in (0.05,) if args.quick else MARGINS:
                for upper in (True, False):
                    short, where = search_shortfall(n, delta, upper)
                    worst = max(worst, short)
                    tail = "REGRESSED" if upper else "non-inferiority"
                    lines.append(f"| {n} | {delta:g} | {tail} | {short:.2e} | {where} |")
                    print(lines[-1], flush=True)
        lines += ["", f"Largest: **{worst:.2e}**.", ""]
    if "pass" in sections:
        lines += [
            "## 5. Size of PASS: P(PASS or IMPROVED | true drop = δ)",
            "",
            "| n | δ | ψ | size | how |",
            "|---:|---:|---:|---:|---|",
        ]
        ns = (10, 40, 100, 1000) if args.quick else (10, 20, 30, 40, 50, 100, 200, 500, 1000, 2000)
        margins = (0.05,) if args.quick else MARGINS
        worst = 0.0
        for n, delta, psi, size, how in pass_rows(ns, margins):
            worst = max(worst, size)
            lines.append(f"| {n} | {delta:g} | {psi:g} | {size:.5f} | {how} |")
            print(lines[-1], flush=True)
        lines += ["", f"Largest: **{worst:.5f}** (α = {ALPHA}).", ""]
        max_n = 15 if args.quick else 40
        tables, problems = pass_shape(max_n, (0.02, 0.05, 0.1))
        lines += [
            f"Every table with n ≤ {max_n} ({tables:,} tables) at margins 0.02, 0.05, 0.1:",
            f"{len(problems)} tables where PASS holds but the non-inferiority p-value at δ does not",
            "reject, or where the shipped tables of a discordant count m are not `b ≤ s(m)`.",
            "",
            *[f"- {p}" for p in problems[:20]],
            "",
        ]
    if "agreement" in sections:
        rows = 800 if args.quick else 8000
        rows, clipped, problems = clustered_agreement(rows, seed=2026)
        lines += [
            "## 6. Clustered rows: the bound and the p-value agree",
            "",
            f"{rows:,} random clustered slices (clusters of 2, 5 or 8, 5–40 clusters, δ = 0.02, 0.05, 0.1;",
            f"{clipped:,} with the design effect floored at 1): **{len(problems)}** rows where",
            "PASS (bound < δ) differs from the non-inferiority p-value with the same t reference < α.",
            "",
            *[f"- {p}" for p in problems[:20]],
            "",
        ]
    lines += [f"Took {time.perf_counter() - started:.0f} s.", ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
