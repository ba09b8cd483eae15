"""Paired statistics of two models' perplexity over the same token windows (``--quant-ppl-corpus``).

Both models score the same tokens in the same windows
(:mod:`..core.perplexity`), so the comparison is paired by window: window
``w`` holds ``n_w`` scored tokens, and the models' summed negative
log-likelihoods there are ``r_w`` (reference) and ``c_w`` (candidate).

- ``ln(PPL_c / PPL_r) = (Σ c_w − Σ r_w) / Σ n_w``: the mean per-token
  difference of NLL, total over total (never a mean of window means).
- Its standard error is the cluster-robust one of that mean with the
  windows as clusters (tokens of one window share a context, and are not
  independent): ``SE² = G/(G−1) · Σ_w (d_w − ρ·n_w)² / (Σ n_w)²`` with
  ``d_w = c_w − r_w``, ``ρ`` the ratio above and ``G`` windows — the CR1
  variance statsmodels gives an intercept-only regression of the per-token
  differences clustered by window (the tests check it against statsmodels).
- The bounds are one-sided at level α each, referred to Student's t with
  ``G − 1`` degrees of freedom (Miller 2024's small-sample advice for
  clustered errors); together they are a ``1 − 2α`` two-sided interval.
- The verdict against a ratio margin ``m`` (``--quant-ppl-tolerance``):
  REGRESSED when the lower bound of the ratio exceeds ``1 + m``, PASS when
  the upper bound is below it, INCONCLUSIVE otherwise — the rules of a slice
  (:mod:`.gate`), on the ratio of perplexities.
- The correlation of per-window log-perplexity (``r_w / n_w`` against
  ``c_w / n_w``), as llama.cpp prints the correlation of its models' log-PPL.

Pure numpy; scipy is imported where the t quantile is needed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from .gate import Verdict

__all__ = ["PairedRatio", "paired_ratio", "ratio_verdict"]


@dataclass(frozen=True)
class PairedRatio:
    """The ratio of two perplexities over the same windows, with its paired bounds.

    Attributes:
        windows: Windows paired (``G``).
        tokens: Tokens scored in all of them (``Σ n_w``).
        ln_ratio: ``ln(PPL_candidate / PPL_reference)``.
        se: Its clustered standard error; None with fewer than two windows.
        lower: One-sided ``1 − alpha`` lower bound of ``ln_ratio``; None without ``se``.
        upper: One-sided ``1 − alpha`` upper bound of ``ln_ratio``; None without ``se``.
        correlation: Pearson's correlation of per-window log-perplexity; None
            with fewer than two windows or a constant one.
        alpha: The level of each bound.
    """

    windows: int
    tokens: int
    ln_ratio: float
    se: float | None
    lower: float | None
    upper: float | None
    correlation: float | None
    alpha: float

    @property
    def ratio(self) -> float:
        """``PPL_candidate / PPL_reference``."""
        return math.exp(self.ln_ratio)

    @property
    def ratio_lower(self) -> float | None:
        return None if self.lower is None else math.exp(self.lower)

    @property
    def ratio_upper(self) -> float | None:
        return None if self.upper is None else math.exp(self.upper)

    def verdict(self, tolerance: float) -> Verdict:
        """REGRESSED, PASS or INCONCLUSIVE against the ratio margin ``1 + tolerance``."""
        return ratio_verdict(self.lower, self.upper, tolerance)

    def to_dict(self) -> dict[str, float | int | None]:
        return {
            "windows": self.windows,
            "tokens": self.tokens,
            "ratio": self.ratio,
            "ln_ratio": self.ln_ratio,
            "se": self.se,
            "ratio_lower": self.ratio_lower,
            "ratio_upper": self.ratio_upper,
            "ln_lower": self.lower,
            "ln_upper": self.upper,
            "correlation": self.correlation,
            "alpha": self.alpha,
        }


def ratio_verdict(lower: float | None, upper: float | None, tolerance: float) -> Verdict:
    """The verdict of a ratio whose ln has one-sided bounds ``lower``/``upper``, against ``1 + tolerance``.

    PASS is strict (an upper bound at the margin is not below it), as a
    slice's is; without bounds nothing can be shown either way.
    """
    margin = math.log1p(tolerance)
    if lower is not None and lower > margin:
        return Verdict.REGRESSED
    if upper is not None and upper < margin:
        return Verdict.PASS
    return Verdict.INCONCLUSIVE


def paired_ratio(
    reference: Sequence[float], candidate: Sequence[float], tokens: Sequence[int], alpha: float = 0.05
) -> PairedRatio:
    """The paired ratio of perplexities from per-window NLL sums (module docstring).

    Args:
        reference: Per window, the reference's summed NLL (nats) of the scored tokens.
        candidate: The candidate's, over the same tokens.
        tokens: Per window, the tokens scored (the same for both models).
        alpha: Level of each one-sided bound.

    Raises:
        ValueError: lengths differ, no token was scored, a window scores none,
            or a value is not finite.
    """
    import numpy as np

    r = np.asarray(reference, dtype=float)
    c = np.asarray(candidate, dtype=float)
    n = np.asarray(tokens, dtype=float)
    if not (r.shape == c.shape == n.shape) or r.ndim != 1:
        raise ValueError(f"per-window values differ in length: {r.shape}, {c.shape}, {n.shape}")
    if r.size == 0 or not np.all(n > 0):
        raise ValueError("every window must score at least one token")
    if not (np.all(np.isfinite(r)) and np.all(np.isfinite(c))):
        raise ValueError("a window's NLL is not finite")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    total = float(n.sum())
    d = c - r
    rho = float(d.sum()) / total
    windows = int(r.size)
    se = lower = upper = corr = None
    if windows >= 2:
        e = d - rho * n
        se = math.sqrt(windows / (windows - 1) * float(np.sum(e * e))) / total
        from scipy import stats

        q = float(stats.t.ppf(1.0 - alpha, windows - 1))
        lower, upper = rho - q * se, rho + q * se
        lr, lc = r / n, c / n
        if float(np.std(lr)) > 0 and float(np.std(lc)) > 0:
            corr = float(np.corrcoef(lr, lc)[0, 1])
    return PairedRatio(
        windows=windows,
        tokens=int(total),
        ln_ratio=rho,
        se=se,
        lower=lower,
        upper=upper,
        correlation=corr,
        alpha=alpha,
    )
