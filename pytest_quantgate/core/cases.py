"""A collected quant case as the runner takes it: :class:`CaseSpec`, built once per item."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..values.prompts import GenerationSettings, Prompt, normalize_prompt, prompt_messages
from .identity import CaseIdentityError, case_key, param_identities
from .markers import QuantCaseMarker, merge_tolerances, parse_slice_marker, slice_max_kl
from .records import describe_exception
from .trajectory import Started, Trajectory, TrajectoryDriver

__all__ = ["CaseBuildError", "CaseSpec", "build_case"]


@dataclass(frozen=True)
class CaseSpec:
    """What the runner needs to produce one case's transcript."""

    key: str
    nodeid: str
    prompt: Prompt
    settings: GenerationSettings
    slices: tuple[str, ...] = ()
    cluster: str | None = None
    critical: bool = False
    tolerances: dict[str, float] = field(default_factory=dict)  # set by slice markers
    max_kl: dict[str, float] = field(default_factory=dict)  # slice -> slice(max_kl=...)
    params: dict[str, Any] = field(default_factory=dict)  # the other arguments, for reports (_shown)
    trajectory: Any = None  # the case's Trajectory; ``prompt`` is then its first prompt
    #: How the trajectory began when the case was built (first prompt, initial state): each
    #: model's run begins from it, so ``initial_state()`` runs once per case.
    started: Started | None = None

    @property
    def prompt_text(self) -> str:
        """The prompt as one string (chat messages as JSON), for reports."""
        messages = prompt_messages(self.prompt)
        return self.prompt if isinstance(self.prompt, str) else json.dumps(messages)


#: Longest repr of an argument kept in a record (reports show arguments, not data sets).
PARAM_WIDTH = 200


def _shown(value: Any) -> Any:
    """An argument for reports: the value itself when it is JSON and short, else its text, cut.

    JSON values (numbers, strings, lists, dicts) stay JSON in the report,
    where a consumer reads them as data; anything else is its ``repr``.
    """
    try:
        text = json.dumps(value, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    else:
        if len(text) <= PARAM_WIDTH:
            return value
    return text if len(text) <= PARAM_WIDTH else text[: PARAM_WIDTH - 1] + "…"


class CaseBuildError(ValueError):
    """A collected case that cannot become a :class:`CaseSpec`; one line."""


def build_case(
    marker: QuantCaseMarker,
    *,
    test_id: str,
    nodeid: str,
    params: Mapping[str, Any],
    index: int | None,
    slice_markers: Iterable[tuple[Sequence[Any], Mapping[str, Any]]],
    cluster_mark: Any = None,
) -> CaseSpec:
    """The case of one collected item.

    Args:
        marker: the test's parsed ``quant_case``.
        test_id: the test's node id without its parameters.
        nodeid: the item's node id.
        params: every parameter of the item (``callspec.params``).
        index: the item's position in ``marker.argvalues``.
        slice_markers: ``(args, kwargs)`` of the ``slice`` markers, closest first.
        cluster_mark: the item's ``quant_cluster`` marker value, the cluster
            when the marker has no ``cluster=`` (set by :func:`~.loaders.load_cases`).

    Raises:
        CaseBuildError: the prompt or cluster cannot be built, or a parameter
            has no stable identity.
    """

    own = {n: params[n] for n in marker.argnames}
    trajectory = None
    started: Started | None = None
    try:
        raw_prompt = params[marker.prompt] if isinstance(marker.prompt, str) else marker.prompt(**own)
        if isinstance(raw_prompt, Trajectory):
            trajectory = raw_prompt
            driver = TrajectoryDriver(trajectory)
            first = driver.start()  # once: every model's driver begins from what it made
            started = (first, driver.state)
            prompt = "" if first is None else first
        else:
            prompt = normalize_prompt(raw_prompt)
        cluster = None
        if marker.cluster is not None:
            value = params[marker.cluster] if isinstance(marker.cluster, str) else marker.cluster(**own)
            cluster = None if value is None else str(value)
        elif cluster_mark is not None:
            cluster = str(cluster_mark)
        explicit = (
            marker.explicit_ids[index] if index is not None and index < len(marker.explicit_ids) else None
        )
        key = case_key(test_id, param_identities(params, explicit), prompt, marker.settings)
    except CaseIdentityError as exc:
        raise CaseBuildError(f"{nodeid}: {exc}") from None
    except Exception as exc:  # the user's prompt= or cluster= callable, or a missing argument
        raise CaseBuildError(
            f"{nodeid}: cannot build the quant case: {describe_exception(exc).splitlines()[-1]}"
        ) from exc
    slices: list[str] = []
    tolerances: list[dict[str, float]] = []
    max_kl: list[dict[str, float]] = []
    for args, kwargs in slice_markers:
        names, tol = parse_slice_marker(args, kwargs)
        slices.extend(n for n in names if n not in slices)
        if tol is not None:
            tolerances.append(dict.fromkeys(names, tol))
        threshold = slice_max_kl(kwargs)
        if threshold is not None:
            max_kl.append(dict.fromkeys(names, threshold))
    return CaseSpec(
        key=key,
        nodeid=nodeid,
        prompt=prompt,
        settings=marker.settings,
        slices=tuple(slices),
        cluster=cluster,
        critical=marker.critical,
        tolerances=merge_tolerances(*tolerances),
        max_kl=merge_tolerances(*max_kl),
        params={n: _shown(v) for n, v in own.items() if n != marker.prompt},
        trajectory=trajectory,
        started=started,
    )
