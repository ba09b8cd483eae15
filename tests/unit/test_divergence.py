"""Token divergence: the per-token KL, a case's figures, a slice's summary, the reference's scores."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from pytest_quantgate.backends.base import TokenScores
from pytest_quantgate.core.divergence import TOP_K, payload_to_scores, scores_to_payload
from pytest_quantgate.statistics.divergence import CaseDivergence, case_divergence, summarize, token_kl


def _logsoftmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max()
    return shifted - np.log(np.exp(shifted).sum())


def _scores(ref_logits: np.ndarray, cand_logits: np.ndarray, k: int) -> tuple[TokenScores, TokenScores]:
    """Both models' scores of one token (the reference's argmax), as a backend makes them."""
    lp, lq = _logsoftmax(ref_logits), _logsoftmax(cand_logits)
    top = np.argsort(-lp, kind="stable")[:k]
    token = int(top[0])
    rest_p = float(np.log(np.exp(np.delete(lp, top)).sum())) if k < len(lp) else -math.inf
    rest_q = float(np.log(np.exp(np.delete(lq, top)).sum())) if k < len(lq) else -math.inf
    ref = TokenScores(
        (token,), (float(lp[token]),), (tuple((int(t), float(lp[t])) for t in top),), (), (rest_p,)
    )
    cand_top = int(np.argmax(lq))
    cand = TokenScores(
        (token,),
        (float(lq[token]),),
        (((cand_top, float(lq[cand_top])),),),
        (tuple(float(lq[t]) for t in top),),
        (rest_q,),
    )
    return ref, cand


def test_identical_distributions_diverge_by_zero_and_agree_on_top1() -> None:
    logits = np.random.default_rng(0).normal(size=50)
    ref, cand = _scores(logits, logits.copy(), k=8)
    d = case_divergence([ref], [cand])
    assert d.kl == (0.0,) and d.top1 == 1 and d.dp == 0.0


@pytest.mark.parametrize("seed", range(5))
def test_kl_over_the_whole_vocabulary_equals_scipys(seed: int) -> None:
    rng = np.random.default_rng(seed)
    p_logits, q_logits = rng.normal(size=20), rng.normal(size=20) * 1.5
    ref, cand = _scores(p_logits, q_logits, k=20)  # every token kept: no tail
    expected = sps.entropy(np.exp(_logsoftmax(p_logits)), np.exp(_logsoftmax(q_logits)))
    assert case_divergence([ref], [cand]).kl[0] == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("seed", range(5))
def test_top_k_plus_tail_is_the_kl_of_the_coarse_grained_distributions(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    p_logits, q_logits = rng.normal(size=200) * 3, rng.normal(size=200) * 3
    k = 32
    ref, cand = _scores(p_logits, q_logits, k=k)
    p, q = np.exp(_logsoftmax(p_logits)), np.exp(_logsoftmax(q_logits))
    top = np.argsort(-p, kind="stable")[:k]
    rest = np.setdiff1d(np.arange(200), top)
    coarse_p = np.append(p[top], p[rest].sum())
    coarse_q = np.append(q[top], q[rest].sum())
    got = case_divergence([ref], [cand]).kl[0]
    assert got == pytest.approx(sps.entropy(coarse_p, coarse_q), abs=1e-6)
    # Coarse-graining never raises a KL divergence: a lower bound on the full one.
    assert got <= sps.entropy(p, q) + 1e-9


def test_known_two_point_kl() -> None:
    # P = (0.9, 0.1), Q = (0.6, 0.4): KL = 0.9 ln 1.5 + 0.1 ln 0.25.
    kl = token_kl([(0, math.log(0.9))], math.log(0.1), [math.log(0.6)], math.log(0.4))
    assert kl == pytest.approx(0.9 * math.log(1.5) + 0.1 * math.log(0.25), abs=1e-12)


def test_no_candidate_mass_where_the_reference_has_some_is_infinite() -> None:
    assert token_kl([(0, 0.0)], -math.inf, [-math.inf], 0.0) == math.inf
    # Mass the reference does not have costs nothing.
    assert token_kl([(0, 0.0)], -math.inf, [0.0], -math.inf) == 0.0


def test_delta_p_and_top1_disagreement() -> None:
    ref, cand = _scores(np.array([3.0, 1.0, 0.0]), np.array([1.0, 3.0, 0.0]), k=2)
    d = case_divergence([ref], [cand])
    assert d.top1 == 0
    p = np.exp(_logsoftmax(np.array([3.0, 1.0, 0.0])))
    assert d.dp == pytest.approx(p[1] - p[0])


def test_other_tokens_are_refused() -> None:
    ref = TokenScores((1, 2), (0.0, 0.0), (((1, 0.0),), ((2, 0.0),)), (), (-math.inf, -math.inf))
    cand = TokenScores(
        (1, 3), (0.0, 0.0), (((1, 0.0),), ((3, 0.0),)), ((0.0,), (0.0,)), (-math.inf, -math.inf)
    )
    with pytest.raises(ValueError, match="other tokens"):
        case_divergence([ref], [cand])


def _case(kls: list[float], top1: int | None = None) -> CaseDivergence:
    return CaseDivergence(tuple(kls), len(kls) if top1 is None else top1, 0.0)


def test_slice_mean_is_kl_over_tokens_with_a_case_level_t_interval() -> None:
    cases = [("a", None, _case([0.1, 0.3])), ("b", None, _case([0.2])), ("c", None, _case([0.0, 0.0, 0.9]))]
    s = summarize(cases, alpha=0.05)
    assert s is not None
    assert s.mean_kl == pytest.approx(1.5 / 6) and s.tokens == 6 and s.units == 3
    # The ratio estimator's cluster-robust standard error, by hand.
    sums, counts = np.array([0.4, 0.2, 0.9]), np.array([2, 1, 3])
    r = sums.sum() / counts.sum()
    se = math.sqrt(3 / 2 * ((sums - r * counts) ** 2).sum()) / counts.sum()
    half = sps.t.ppf(0.95, 2) * se
    assert (s.low, s.high) == pytest.approx((r - half, r + half))
    assert s.max_kl == 0.9 and s.median_kl == pytest.approx(np.median([0.1, 0.3, 0.2, 0, 0, 0.9]))
    assert s.p99_kl == pytest.approx(np.quantile([0.1, 0.3, 0.2, 0, 0, 0.9], 0.99))
    assert s.worst == ("c", pytest.approx(0.3))


def test_clusters_are_the_unit_of_the_interval() -> None:
    per_case = [
        ("a", "x", _case([0.1])),
        ("b", "x", _case([0.3])),
        ("c", "y", _case([0.0])),
        ("d", "y", _case([0.2])),
    ]
    clustered = summarize(per_case)
    plain = summarize([(cid, None, d) for cid, _, d in per_case])
    assert clustered is not None and plain is not None
    assert clustered.units == 2 and plain.units == 4
    assert clustered.mean_kl == plain.mean_kl
    assert (clustered.high - clustered.low) != pytest.approx(plain.high - plain.low)


def test_threshold_is_tested_on_the_lower_bound() -> None:
    cases = [(str(i), None, _case([0.1 + 0.01 * (i % 3)] * 4)) for i in range(30)]
    s = summarize(cases, threshold=0.05)
    assert s is not None and s.low > 0.05 and s.exceeds
    s = summarize(cases, threshold=0.2)
    assert s is not None and not s.exceeds
    one = summarize([("only", None, _case([1.0, 1.0]))], threshold=0.01)
    assert one is not None and one.low == -math.inf and not one.exceeds  # one unit: no interval


def test_nothing_scored_is_no_summary() -> None:
    assert summarize([("a", None, _case([]))]) is None


def test_case_divergence_round_trips_through_builtins() -> None:
    d = CaseDivergence((0.123456789, 0.0, 2.5), 2, -0.25)
    back = CaseDivergence.from_dict(d.to_dict())
    assert back.top1 == 2 and back.dp == -0.25 and back.kl == pytest.approx(d.kl, rel=1e-5)


def test_reference_scores_round_trip_through_the_cache_payload() -> None:
    top = tuple(((i, -0.1 * (i + 1)),) for i in range(3))
    scores = [TokenScores((1, 2, 3), (-0.1, -0.2, -math.inf), top, (), (-1.0, -math.inf, -2.0))]
    payload = scores_to_payload(scores)
    assert payload["k"] == TOP_K
    assert payload_to_scores(payload) == scores
    assert payload_to_scores({**payload, "k": TOP_K + 1}) is None
    assert payload_to_scores({"k": TOP_K, "steps": [{"tokens": "x"}]}) is None
