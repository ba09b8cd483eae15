"""Token divergence between the reference and a candidate: per token, per case, per slice.

Teacher-forced on the reference's own transcript, every model scores the
same tokens (llama.cpp's ``--kl-divergence`` reads its tokens from the base
run the same way). Per token:

- KL(reference ‖ candidate) over the reference's top-k tokens plus one tail
  bucket holding the rest of the vocabulary. Coarse-graining never raises a
  KL divergence, so this is a lower bound on the full-vocabulary KL; with
  k = 32 the tail of a confident model holds little mass and the two agree
  closely (the difference is the KL within the tail).
- whether the two models' most likely tokens agree (top-1 agreement);
- Δp: the candidate's probability of the reference's token minus the
  reference's.

Per slice (:func:`summarize`): the mean KL per token (total KL over tokens
scored, as llama.cpp reports it) with a confidence interval that treats
cases — or clusters, when the slice has them — as the unit (a ratio
estimator with a cluster-robust variance and a t reference with G − 1
degrees of freedom: tokens of one case are not independent); the median,
p90, p99 and maximum token KL; top-1 agreement; mean Δp; and the case with
the largest mean KL. Pure Python; scipy only for the t quantile.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CaseDivergence",
    "DivergenceSummary",
    "case_divergence",
    "summarize",
    "token_kl",
]


def token_kl(
    ref_top: Sequence[tuple[int, float]],
    ref_rest: float,
    cand_at: Sequence[float],
    cand_rest: float,
) -> float:
    """KL(P ‖ Q) at one position over the reference's top tokens and a tail bucket.

    Args:
        ref_top: The reference's top-k tokens there as ``(id, log p)``.
        ref_rest: log of the reference's probability outside those ids.
        cand_at: The candidate's log q of the same ids, in the same order.
        cand_rest: log of the candidate's probability outside those ids.

    Returns:
        Σ p_i (log p_i − log q_i) + p_rest (log p_rest − log q_rest), in nats;
        ``inf`` when the candidate gives no mass where the reference gives some.
        No logit is clamped.
    """
    if len(ref_top) != len(cand_at):
        raise ValueError(f"{len(ref_top)} reference tokens but {len(cand_at)} candidate log-probabilities")
    total = 0.0
    for (_, lp), lq in [*zip(ref_top, cand_at, strict=True), ((-1, ref_rest), cand_rest)]:
        if lp == -math.inf:
            continue
        if lq == -math.inf:
            return math.inf
        total += math.exp(lp) * (lp - lq)
    return total


@dataclass(frozen=True)
class CaseDivergence:
    """One case's divergence on one candidate: every scored token of every step.

    Attributes:
        kl: Per token, KL(reference ‖ candidate) (:func:`token_kl`).
        top1: Tokens where both models' most likely token is the same.
        dp: Σ over tokens of p_candidate − p_reference of the reference's token.
    """

    kl: tuple[float, ...]
    top1: int
    dp: float

    @property
    def tokens(self) -> int:
        return len(self.kl)

    @property
    def kl_sum(self) -> float:
        return math.fsum(self.kl)

    @property
    def mean_kl(self) -> float:
        return self.kl_sum / self.tokens if self.kl else 0.0

    def to_dict(self) -> dict[str, Any]:
        """As builtins: per-token KL rounded to 6 significant digits, the sum exact."""
        return {
            "tokens": self.tokens,
            "kl_sum": self.kl_sum,
            "kl": [float(f"{x:.6g}") for x in self.kl],
            "top1": self.top1,
            "dp": self.dp,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CaseDivergence:
        kl = tuple(float(x) for x in data.get("kl") or ())
        return cls(kl=kl, top1=int(data.get("top1", 0)), dp=float(data.get("dp", 0.0)))


def case_divergence(
    reference: Sequence[Any],
    candidate: Sequence[Any],
) -> CaseDivergence:
    """The divergence of one case from both models' scores of the reference's transcript.

    Args:
        reference: Per step, the reference's scores (``TokenScores`` with
            ``top`` and ``rest``: its top-k and the mass outside them).
        candidate: Per step, the candidate's scores of the same tokens, with
            ``at`` (log q of the reference's top-k ids), ``rest`` and ``top``
            (its own top-1).

    Raises:
        ValueError: the two did not score the same tokens (another
            tokenizer), or a score lacks what is needed.
    """
    if len(reference) != len(candidate):
        raise ValueError(f"{len(reference)} reference steps but {len(candidate)} candidate steps")
    kls: list[float] = []
    top1 = 0
    dp = 0.0
    for ref, cand in zip(reference, candidate, strict=True):
        if tuple(ref.tokens) != tuple(cand.tokens):
            raise ValueError("the candidate tokenizes the reference's reply into other tokens")
        n = len(ref.tokens)
        if len(ref.top) != n or len(ref.rest) != n or len(cand.at) != n or len(cand.rest) != n:
            raise ValueError("a score lacks the top-k or the tail of some position")
        for i in range(n):
            kls.append(token_kl(ref.top[i], ref.rest[i], cand.at[i], cand.rest[i]))
            if cand.top and cand.top[i] and ref.top[i] and cand.top[i][0][0] == ref.top[i][0][0]:
                top1 += 1
            dp += math.exp(cand.logprobs[i]) - math.exp(ref.logprobs[i])
    return CaseDivergence(tuple(kls), top1, dp)


@dataclass(frozen=True)
class DivergenceSummary:
    """A slice's divergence on one candidate.

    Attributes:
        cases: Cases scored.
        units: Independent units the interval uses (clusters, else cases).
        tokens: Tokens scored.
        mean_kl: Total KL over tokens scored (nats per token).
        low: Lower end of the two-sided 1 − 2α interval of ``mean_kl``:
            the one-sided 1 − α lower bound a ``max_kl`` threshold is tested on.
        high: Upper end of that interval (``inf`` with fewer than two units).
        median_kl, p90_kl, p99_kl, max_kl: Quantiles of the token KLs.
        top1: Fraction of tokens whose most likely token agrees.
        mean_dp: Mean Δp of the reference's token.
        worst: The case with the largest mean KL (its id) and that mean.
        threshold: The slice's ``max_kl``, if it has one.
    """

    cases: int
    units: int
    tokens: int
    mean_kl: float
    low: float
    high: float
    median_kl: float
    p90_kl: float
    p99_kl: float
    max_kl: float
    top1: float
    mean_dp: float
    worst: tuple[str, float] | None
    threshold: float | None = None

    @property
    def exceeds(self) -> bool:
        """Whether the mean KL is significantly above the threshold (its lower bound is)."""
        return self.threshold is not None and self.low > self.threshold

    def above(self, floor: float) -> bool:
        """Whether the mean KL is significantly above ``floor`` (the noise floor's mean)."""
        return self.low > floor

    def to_dict(self) -> dict[str, Any]:
        """As builtins; a non-finite figure (one unit: no interval; a zero probability) as text."""
        return {
            "cases": self.cases,
            "units": self.units,
            "tokens": self.tokens,
            "mean_kl": _finite(self.mean_kl),
            "low": _finite(self.low),
            "high": _finite(self.high),
            "median_kl": _finite(self.median_kl),
            "p90_kl": _finite(self.p90_kl),
            "p99_kl": _finite(self.p99_kl),
            "max_kl": _finite(self.max_kl),
            "top1": self.top1,
            "mean_dp": self.mean_dp,
            "worst": None
            if self.worst is None
            else {"case": self.worst[0], "mean_kl": _finite(self.worst[1])},
            "threshold": self.threshold,
            "exceeds": self.exceeds,
        }


def _finite(x: float) -> float | str:
    """A number for JSON: ``inf``, ``-inf`` and ``nan`` as those words."""
    return x if math.isfinite(x) else str(x)


def quantile(sorted_values: Sequence[float], q: float) -> float:
    """The q-quantile of sorted values, linear between order statistics (numpy's default)."""
    if not sorted_values:
        return math.nan
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    a, b = sorted_values[lo], sorted_values[hi]
    if a == b:  # also inf == inf: no inf - inf
        return a
    return a + (b - a) * (pos - lo)


def summarize(
    cases: Sequence[tuple[str, Hashable | None, CaseDivergence]],
    *,
    alpha: float = 0.05,
    threshold: float | None = None,
) -> DivergenceSummary | None:
    """A slice's :class:`DivergenceSummary` from its cases ``(case id, cluster, divergence)``.

    The mean is a ratio (total KL over total tokens); its variance is the
    cluster-robust variance of the ratio estimator over units g (a cluster,
    or a case without one): G/(G − 1) · Σ_g (S_g − R·T_g)² / (Σ_g T_g)², with
    S_g the unit's KL sum and T_g its tokens, and a t reference with G − 1
    degrees of freedom. None when no token was scored.
    """
    scored = [(cid, cl, d) for cid, cl, d in cases if d.tokens]
    tokens = sum(d.tokens for _, _, d in scored)
    if not tokens:
        return None
    units: dict[Hashable, list[float]] = {}
    for cid, cl, d in scored:
        unit = units.setdefault(("cluster", cl) if cl is not None else ("case", cid), [0.0, 0.0])
        unit[0] += d.kl_sum
        unit[1] += d.tokens
    total_kl = math.fsum(d.kl_sum for _, _, d in scored)
    mean = total_kl / tokens
    g = len(units)
    if not math.isfinite(mean):
        low, high = mean, mean
    elif g < 2:
        low, high = -math.inf, math.inf
    else:
        from scipy.stats import t as student_t

        spread = math.fsum((s - mean * n) ** 2 for s, n in units.values())
        se = math.sqrt(g / (g - 1) * spread) / tokens
        half = float(student_t.ppf(1 - alpha, g - 1)) * se
        low, high = mean - half, mean + half
    values = sorted(x for _, _, d in scored for x in d.kl)
    worst_id, _, worst = max(scored, key=lambda item: item[2].mean_kl)
    return DivergenceSummary(
        cases=len(scored),
        units=g,
        tokens=tokens,
        mean_kl=mean,
        low=low,
        high=high,
        median_kl=quantile(values, 0.5),
        p90_kl=quantile(values, 0.9),
        p99_kl=quantile(values, 0.99),
        max_kl=values[-1],
        top1=sum(d.top1 for _, _, d in scored) / tokens,
        mean_dp=math.fsum(d.dp for _, _, d in scored) / tokens,
        worst=(worst_id, worst.mean_kl),
        threshold=threshold,
    )
