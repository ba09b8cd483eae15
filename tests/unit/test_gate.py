"""Gate verdicts: the seed scenario, rules, serialisation and simulated error rates."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import numpy as np
import pytest
from scipy import stats as sps

from pytest_quantgate.statistics import power, stats
from pytest_quantgate.statistics.gate import (
    GateSettings,
    SliceOutcomes,
    SliceResult,
    Verdict,
    evaluate,
    overall_verdict,
)

SETTINGS = GateSettings()
#: Verdicts only: the power numbers of INCONCLUSIVE rows cost up to seconds each.
VERDICTS = GateSettings(plan=False)


def outcomes(
    name: str,
    both: int,
    b: int,
    c: int,
    neither: int,
    *,
    tolerance: float | None = None,
    clusters: Sequence[str | None] | None = None,
) -> SliceOutcomes:
    """A slice from its four cell counts: both pass, regressions, improvements, both fail."""
    reference = (True,) * both + (True,) * b + (False,) * c + (False,) * neither
    candidate = (True,) * both + (False,) * b + (True,) * c + (False,) * neither
    return SliceOutcomes(
        name=name,
        reference=reference,
        candidate=candidate,
        clusters=None if clusters is None else tuple(clusters),
        tolerance=tolerance,
    )


def only(row_outcomes: SliceOutcomes, settings: GateSettings = SETTINGS) -> SliceResult:
    (row,) = evaluate([row_outcomes], None, settings)
    return row


# --------------------------------------------------------------------------
# the seed scenario (DESIGN §4): 340 cases, 81.2% -> 74.1%


def test_seed_regression_is_regressed() -> None:
    row = only(outcomes("task-completion", 244, 32, 8, 56))
    assert row.n == 340
    assert row.ref_accuracy == pytest.approx(0.812, abs=5e-4)
    assert row.cand_accuracy == pytest.approx(0.741, abs=5e-4)
    assert row.drop == pytest.approx(24 / 340)
    assert (row.regressions, row.improvements) == (32, 8)
    # 0.0024 at the restricted MLE (DESIGN §4a); the exact p-value maximises
    # over a 99.9% interval of the discordance rate and adds 0.001.
    assert 0.0034 <= row.p_value < 0.0035
    assert row.verdict is Verdict.REGRESSED
    assert row.mdd is None and row.n_needed is None
    assert row.upper > row.drop > row.tolerance


def test_seed_identical_model_passes_at_340_cases() -> None:
    row = only(outcomes("task-completion", 276, 0, 0, 64))
    assert row.verdict is Verdict.PASS
    assert row.drop == 0.0 and row.se == 0.0
    # (1 − U)^340 + γ = α for the exact test.
    assert row.upper == pytest.approx(1 - (0.05 - stats.BB_GAMMA) ** (1 / 340), abs=1e-7)
    assert row.p_value == 1.0


def test_seed_identical_model_is_inconclusive_at_30_cases() -> None:
    row = only(outcomes("constraint-retention", 24, 0, 0, 6))
    assert row.verdict is Verdict.INCONCLUSIVE
    assert row.upper > row.tolerance
    assert row.mdd is not None and row.tolerance < row.mdd < 1.0
    # The gate flags a true drop of mdd at least 80% of the time...
    assert power.regression_power(30, row.mdd, 0.0, 0.02, 0.05) >= 0.8
    assert power.regression_power(30, row.mdd - 0.001, 0.0, 0.02, 0.05) < 0.8
    # ...and with no flips a PASS needs (1 − δ)^n + γ < α: 150 cases, not the
    # large-sample 133 (at 133 the bound is 2.3 points).
    assert row.n_needed in (150, 151) and row.n_needed_for == "PASS"
    assert power.pass_power(row.n_needed, 0.0, 0.0, 0.02, 0.05) >= 0.8
    assert power.pass_power(149, 0.0, 0.0, 0.02, 0.05) == 0.0


# --------------------------------------------------------------------------
# rules


@pytest.mark.parametrize(
    ("both", "b", "c", "neither", "tolerance", "expected"),
    [
        (244, 32, 8, 56, 0.02, Verdict.REGRESSED),
        (244, 32, 8, 56, 0.10, Verdict.INCONCLUSIVE),  # 7-point drop, 10-point margin
        (244, 32, 8, 56, 0.20, Verdict.PASS),
        (150, 0, 12, 38, 0.02, Verdict.IMPROVED),
        (276, 0, 0, 64, 0.0, Verdict.INCONCLUSIVE),  # zero margin: only a gain passes
        (270, 3, 9, 58, 0.0, Verdict.INCONCLUSIVE),
        (150, 0, 7, 43, 0.0, Verdict.IMPROVED),
        (1900, 40, 40, 520, 0.02, Verdict.PASS),  # n > 2000: exact too (it used to switch to normal)
        (1900, 120, 40, 440, 0.02, Verdict.REGRESSED),
        (0, 1, 0, 0, 0.02, Verdict.INCONCLUSIVE),  # n = 1
        (0, 3, 0, 0, 0.02, Verdict.INCONCLUSIVE),
        (8, 12, 0, 0, 0.02, Verdict.REGRESSED),
    ],
)
def test_verdict_table(both: int, b: int, c: int, neither: int, tolerance: float, expected: Verdict) -> None:
    row = only(outcomes("s", both, b, c, neither, tolerance=tolerance))
    assert row.verdict is expected
    assert row.tolerance == tolerance
    if expected is Verdict.INCONCLUSIVE:
        assert row.mdd is not None
        if tolerance == 0.0:
            assert row.n_needed is None  # a zero margin is never shown without a gain
        else:
            assert row.n_needed is not None and row.n_needed > row.n
    else:
        assert row.mdd is None and row.n_needed is None


def test_tiny_slice_mdd_is_infinite_and_serialises_as_none() -> None:
    row = only(outcomes("s", 0, 1, 0, 0))
    assert row.mdd == math.inf
    assert row.to_dict()["mdd"] is None


def test_default_and_per_slice_tolerance() -> None:
    rows = evaluate(
        [outcomes("a", 90, 5, 5, 0), outcomes("b", 90, 5, 5, 0, tolerance=0.1)],
        None,
        GateSettings(tolerance=0.03, plan=False),  # the margins only: no power numbers needed
    )
    assert [r.tolerance for r in rows] == [0.03, 0.1]


GRID = [(both, b, c, 10) for both in (20, 60, 150, 400) for b in (0, 1, 3, 8, 20) for c in (0, 1, 4, 10)]


@pytest.mark.parametrize("tolerance", [0.0, 0.01, 0.02, 0.05])
def test_rules_and_bound_agree_on_a_grid(tolerance: float) -> None:
    slices = [outcomes(f"s{i}", *cells, tolerance=tolerance) for i, cells in enumerate(GRID)]
    for row in evaluate(slices, None, VERDICTS):
        if row.verdict is Verdict.REGRESSED:
            assert row.p_adjusted < row.alpha
            # A significant regression beyond the margin never coexists with
            # a bound that claims non-inferiority.
            assert row.upper >= row.tolerance
        elif row.verdict is Verdict.IMPROVED:
            assert row.drop < 0.0
        else:
            assert (row.verdict is Verdict.PASS) == (row.upper < row.tolerance)
            p = stats.noninferiority_pvalue(row.regressions, row.improvements, row.n, row.tolerance)
            # The exact p-value may dip below α inside the confidence set by
            # a hair (stats.exact_upper_bound); the verdict follows the bound.
            if (p < row.alpha) != (row.verdict is Verdict.PASS):
                assert abs(p - row.alpha) < 1e-3


def test_improved_needs_the_holm_adjusted_pvalue() -> None:
    # c = 5, b = 0: McNemar p = 1/32 < 0.05 alone, but 3/32 > 0.05.
    alone = only(outcomes("a", 90, 0, 5, 5))
    assert alone.verdict is Verdict.IMPROVED
    rows = evaluate(
        [outcomes("a", 90, 0, 5, 5), outcomes("b", 90, 0, 0, 10), outcomes("c", 90, 0, 0, 10)],
        None,
        SETTINGS,
    )
    assert rows[0].verdict is not Verdict.IMPROVED


# --------------------------------------------------------------------------
# Holm across the slices and the ALL row


def test_holm_family_includes_the_total_row() -> None:
    a = outcomes("a", 80, 13, 3, 4)  # raw p ≈ 0.020
    b = outcomes("b", 350, 0, 0, 50)
    total = outcomes("all", 430, 13, 3, 54)
    rows = evaluate([a, b], total, SETTINGS)
    assert [r.slice for r in rows] == ["a", "b", "ALL"]
    assert [r.is_total for r in rows] == [False, False, True]
    expected = stats.holm([r.p_value for r in rows])
    assert [r.p_adjusted for r in rows] == pytest.approx(expected)
    # Three hypotheses: a's adjusted p is 3·p, above α, though 2·p is below.
    assert 2 * rows[0].p_value < 0.05 < 3 * rows[0].p_value
    assert rows[0].verdict is not Verdict.REGRESSED
    assert rows[2].n == 500


def test_a_slice_holding_every_case_is_the_total_hypothesis() -> None:
    only_slice = outcomes("s", 200, 9, 1, 20)
    rows = evaluate([only_slice], outcomes("all", 200, 9, 1, 20), VERDICTS)
    # One hypothesis, counted once: no correction, and both rows agree.
    assert rows[0].p_adjusted == pytest.approx(rows[0].p_value)
    assert rows[1].p_adjusted == rows[0].p_adjusted and rows[1].verdict is rows[0].verdict
    # At another margin it is another hypothesis.
    strict = SliceOutcomes("s", only_slice.reference, only_slice.candidate, tolerance=0.0)
    rows = evaluate([strict], outcomes("all", 200, 9, 1, 20), VERDICTS)
    assert rows[0].p_adjusted > rows[0].p_value
    assert stats.holm([r.p_value for r in rows]) == pytest.approx([r.p_adjusted for r in rows])


def test_total_row_catches_a_diffuse_regression() -> None:
    # Three slices, each alone p ≈ 0.03: Holm keeps them, the ALL test does not.
    slices = [outcomes(name, 80, 6, 0, 14) for name in ("x", "y", "z")]
    total = outcomes("all", 240, 18, 0, 42)
    rows = evaluate(slices, total, SETTINGS)
    assert all(r.p_value < 0.05 for r in rows[:3])
    assert all(r.verdict is not Verdict.REGRESSED for r in rows[:3])
    assert rows[3].verdict is Verdict.REGRESSED
    assert overall_verdict(rows) is Verdict.REGRESSED


# --------------------------------------------------------------------------
# empty slices and serialisation


def test_empty_slice_is_inconclusive_with_nan_statistics() -> None:
    rows = evaluate([outcomes("empty", 0, 0, 0, 0), outcomes("a", 80, 13, 3, 4)], None, SETTINGS)
    empty, a = rows
    assert empty.verdict is Verdict.INCONCLUSIVE
    assert empty.n == 0
    for value in (empty.drop, empty.se, empty.upper, empty.p_value, empty.p_adjusted):
        assert math.isnan(value)
    # The empty slice is not part of the Holm family.
    assert a.p_adjusted == a.p_value
    data = empty.to_dict()
    assert data["drop"] is None and data["p_value"] is None and data["mdd"] is None
    json.dumps(data, allow_nan=False)
    assert data["verdict"] == "INCONCLUSIVE" and data["n"] == 0


def test_round_trip_through_json() -> None:
    rows = evaluate(
        [
            outcomes("reg", 244, 32, 8, 56),
            outcomes("pass", 276, 0, 0, 64),
            outcomes("inc", 24, 0, 0, 6),
            outcomes("imp", 150, 0, 12, 38),
        ],
        outcomes("all", 694, 32, 20, 164),
        SETTINGS,
    )
    for row in rows:
        data = json.loads(json.dumps(row.to_dict(), allow_nan=False))
        assert all(v is None or isinstance(v, (str, int, float, bool)) for v in data.values())
        assert data["verdict"] == row.verdict.value
        for name, value in data.items():
            expected = getattr(row, name)
            assert value == (expected.value if isinstance(expected, Verdict) else expected), name


def test_verdict_is_a_string() -> None:
    assert Verdict.REGRESSED == "REGRESSED"
    assert json.dumps([Verdict.PASS]) == '["PASS"]'
    assert f"{Verdict.INCONCLUSIVE}" == "INCONCLUSIVE"


# --------------------------------------------------------------------------
# clusters


def test_clustered_regressions_use_the_design_effect() -> None:
    # 30 templates of 8 cases; in 5 of them every case regresses together.
    both, b, c, neither = 200, 40, 0, 0
    ids = [f"t{i // 8}" for i in range(both + b)]
    clustered = only(outcomes("s", both, b, c, neither, clusters=ids))
    plain = only(outcomes("s", both, b, c, neither))
    assert clustered.design_effect > 1.0
    assert plain.design_effect == 1.0
    deff = clustered.design_effect
    assert clustered.se == pytest.approx(stats.paired_se(b, c, 240) * math.sqrt(deff))
    z = stats.score_z(b, c, 240, 0.02)
    # 30 clusters: the scaled score is referred to Student's t with 29 df.
    assert clustered.p_value == pytest.approx(sps.t.sf(z / math.sqrt(deff), 29))
    assert clustered.upper == pytest.approx(stats.score_upper_bound(b, c, 240, 0.05, deff=deff, df=29))
    assert clustered.p_value > plain.p_value
    assert clustered.upper > plain.upper


def test_singleton_clusters_change_nothing() -> None:
    ids: list[str | None] = [None] * 340
    with_ids = only(outcomes("s", 244, 32, 8, 56, clusters=ids))
    without = only(outcomes("s", 244, 32, 8, 56))
    assert with_ids == without


# --------------------------------------------------------------------------
# overall verdict


def fake_row(verdict: Verdict, *, is_total: bool = False) -> SliceResult:
    return SliceResult(
        slice="ALL" if is_total else "s",
        n=10,
        ref_accuracy=0.5,
        cand_accuracy=0.5,
        drop=0.0,
        se=0.0,
        upper=0.1,
        regressions=0,
        improvements=0,
        p_value=1.0,
        p_adjusted=1.0,
        tolerance=0.02,
        alpha=0.05,
        design_effect=1.0,
        verdict=verdict,
        mdd=None,
        n_needed=None,
        is_total=is_total,
    )


REG, PAS, INC, IMP = Verdict.REGRESSED, Verdict.PASS, Verdict.INCONCLUSIVE, Verdict.IMPROVED


@pytest.mark.parametrize(
    ("slices", "total", "expected"),
    [
        ([], None, INC),
        ([PAS, PAS], PAS, PAS),
        ([PAS, REG], PAS, REG),
        ([PAS, PAS], REG, REG),
        ([PAS, INC, IMP], PAS, INC),
        ([REG, INC], IMP, REG),
        ([IMP, PAS], IMP, IMP),
        ([IMP, IMP], PAS, PAS),
        ([IMP, IMP], None, IMP),
        ([IMP, PAS], None, PAS),
        ([PAS], None, PAS),
    ],
)
def test_overall_verdict(slices: list[Verdict], total: Verdict | None, expected: Verdict) -> None:
    rows = [fake_row(v) for v in slices]
    if total is not None:
        rows.append(fake_row(total, is_total=True))
    assert overall_verdict(rows) is expected


# --------------------------------------------------------------------------
# validation


def test_invalid_inputs() -> None:
    with pytest.raises(ValueError, match="candidate outcomes"):
        SliceOutcomes("s", (True, False), (True,))
    with pytest.raises(ValueError, match="cluster ids"):
        SliceOutcomes("s", (True,), (True,), clusters=("a", "b"))
    with pytest.raises(ValueError, match="tolerance"):
        SliceOutcomes("s", (True,), (True,), tolerance=1.0)
    with pytest.raises(ValueError, match="alpha"):
        GateSettings(alpha=0.0)
    with pytest.raises(ValueError, match="tolerance"):
        GateSettings(tolerance=-0.1)
    with pytest.raises(ValueError, match="power"):
        GateSettings(power=1.0)


# --------------------------------------------------------------------------
# simulated error rates


def simulate(rng: np.random.Generator, n: int, cells: Sequence[float], slices: int) -> list[SliceOutcomes]:
    """Slices of n cases with cell probabilities (both, b, c, neither)."""
    kinds = rng.choice(4, size=(slices, n), p=np.asarray(cells))
    ref_table = np.array([True, True, False, False])
    cand_table = np.array([True, False, True, False])
    return [
        SliceOutcomes(
            name=f"sim{i}",
            reference=tuple(ref_table[row].tolist()),
            candidate=tuple(cand_table[row].tolist()),
        )
        for i, row in enumerate(kinds)
    ]


@pytest.mark.parametrize(
    ("cells", "tolerance"),
    [
        # No true drop: reference 85%, 3% of cases flip each way (p10 = p01).
        # (Flipping 3% of each model's passes and fails instead would be a
        # true drop of (0.85 − 0.15)·0.03 = 2.1 points, beyond the margin.)
        ((0.82, 0.03, 0.03, 0.12), 0.02),
        ((0.82, 0.03, 0.03, 0.12), 0.0),
        # A true drop exactly on the margin: the least favourable null.
        ((0.81, 0.04, 0.02, 0.13), 0.02),
    ],
)
def test_false_alarm_rate_is_at_most_alpha(cells: tuple[float, ...], tolerance: float) -> None:
    rng = np.random.default_rng(20240611)
    runs, alpha = 1000, 0.05  # the level is checked exactly (every table) in test_stats; this is end to end
    settings = GateSettings(alpha=alpha, tolerance=tolerance, plan=False)
    verdicts = [only(s, settings).verdict for s in simulate(rng, 200, cells, runs)]
    mc_se = math.sqrt(alpha * (1 - alpha) / runs)
    assert verdicts.count(Verdict.REGRESSED) / runs <= alpha + 3 * mc_se
    if cells[1] - cells[2] >= tolerance:
        # A true drop on the margin must not PASS more often than α either.
        assert verdicts.count(Verdict.PASS) / runs <= alpha + 3 * mc_se


def test_a_ten_point_drop_is_caught() -> None:
    # Reference 85% -> candidate 75% on 300 cases: p10 = 0.13, p01 = 0.03, so a drop of
    # 0.10 at discordance 0.16. Exact power of the gate's REGRESSED test (every table summed).
    assert power.regression_power(300, 0.10, 0.16, 0.02, 0.05) >= 0.8
    # And the gate itself says REGRESSED on the table the drop makes most likely.
    assert only(outcomes("s", 216, 39, 9, 36), VERDICTS).verdict is Verdict.REGRESSED


# --------------------------------------------------------------------------
# power numbers that hold, by exact computation


@pytest.mark.parametrize(
    ("both", "b", "c", "neither", "tolerance"),
    [
        (50, 0, 0, 10, 0.02),  # no flips at all
        (50, 2, 1, 7, 0.02),
        (40, 3, 0, 7, 0.05),
        (30, 2, 2, 6, 0.0),
        (15, 0, 0, 5, 0.1),  # PASS within reach
        (40, 4, 0, 6, 0.02),  # a drop to confirm
    ],
)
def test_printed_power_numbers_hold_by_exact_enumeration(
    both: int, b: int, c: int, neither: int, tolerance: float
) -> None:
    """At a true drop of mdd the gate says REGRESSED ≥ 80 % of the time; at n_needed it decides as promised.

    Summed table by table over the gate's own rejection region
    (stats.regression_region), not through the power functions' shortcut.
    """
    row = only(outcomes("s", both, b, c, neither, tolerance=tolerance))
    assert row.verdict is Verdict.INCONCLUSIVE
    n = row.n
    psi = (b + c) / n
    if row.mdd is not None and math.isfinite(row.mdd):
        x = row.mdd
        psi_x = max(psi, x)
        region = stats.regression_region(n, tolerance, 0.05)
        assert stats.region_probability(region, (psi_x + x) / 2, (psi_x - x) / 2) >= 0.8
    if row.n_needed is not None and row.n_needed <= 80:
        drop = max((b - c) / n, 0.0)
        psi_d = max(psi, drop)
        p10, p01 = (psi_d + drop) / 2, (psi_d - drop) / 2
        m = row.n_needed
        if row.n_needed_for == "PASS":
            # PASS is "upper bound < tolerance": sum the tables where it is.
            chance = 0.0
            for bb in range(m + 1):
                for cc in range(m + 1 - bb):
                    mass = float(sps.multinomial.pmf([bb, cc, m - bb - cc], m, [p10, p01, 1 - p10 - p01]))
                    # Tables of less mass are left out: the sum can only be lower.
                    if mass > 1e-7 and stats.upper_bound(bb, cc, m, 0.05) < tolerance:
                        chance += mass
        else:
            chance = stats.region_probability(stats.regression_region(m, tolerance, 0.05), p10, p01)
        assert chance >= 0.8, (row.n_needed, row.n_needed_for, chance)
