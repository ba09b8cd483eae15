"""Task families of the tiny agent model and the eval sets of its three example suites.

One model (``models/tiny-agent``, built by ``tools/build_agent_model.py``)
serves three suites; this module draws their cases and the training data,
with fixed seeds and no torch import (the unit tests use it without the
model stack).

* ``workflow`` -- an agent drives a key-value store with tool calls
  (``set a3`` -> ``put a3``, ``del a`` -> ``drop a``); the constraint
  ``cap 5`` (no value above 5 is stored: ``set b7`` -> ``deny b``) is stated
  at step one and must hold at the last step. Slices by horizon: ``short``
  (1-2 steps), ``long`` (6-7 steps), and ``constraint-retention`` (6-7
  steps; only the last request is above the cap, so the constraint said at
  the top of the conversation alone decides the last action).
* ``transactions`` -- per-event ``ok``/``flag`` decisions over 6-7 events
  under a rule stated at step one: ``numeric`` (``limit 45``: two-digit
  amounts against a two-digit limit, many within a few units of it) and
  ``temporal`` (``max 2/h``: more than N events in one hour).
* ``structured-output`` -- one prompt, one JSON object, checked against a
  JSON Schema and the expected values: ``flat`` (2-4 typed fields) and
  ``nested`` (one field is an object of two fields).

The environments are the suites' own modules (``example_suites/workflow/
workflow_env.py``, ``example_suites/transactions/transactions_env.py``); a
training transcript is what the environment renders when every action is
the right one, so a step's prompt in training is byte for byte the prompt the
suite shows at that step. Rendering is prefix-consistent -- the prompt at
step k+1 is the prompt at step k, the reply, ``"\\n"`` and the next request --
so one sequence teaches every step of a case (see :func:`transcript`).

Eval sets are disjoint from training at the level of whole cases, prefixes
included: a training case is rejected when it, or any prefix of it (its
first m requests or events), is an eval case (:func:`prefix_keys`). Single
steps do recur -- ``cap 5`` then ``set a3`` is one of only 1,560 one-step
workflow openings -- which is the point of a multi-step eval: the long
slices are new as wholes.
"""

from __future__ import annotations

import hashlib
import json
import random
import string
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SUITES_DIR = REPO / "example_suites"
# The environments live beside the suites that use them; pytest imports them
# from there (rootdir-relative, no package), and so does this module.
for _suite in ("workflow", "transactions"):
    if str(SUITES_DIR / _suite) not in sys.path:
        sys.path.insert(0, str(SUITES_DIR / _suite))

import transactions_env  # noqa: E402  (needs the sys.path entries above)
import workflow_env  # noqa: E402

__all__ = [
    "EVAL_SIZES",
    "SLICES",
    "STOP",
    "SUITES",
    "AgentCase",
    "GenerateFn",
    "Played",
    "Transcript",
    "check",
    "data_path",
    "environment",
    "eval_sets",
    "generate",
    "make_case",
    "play",
    "prefix_keys",
    "read_jsonl",
    "right_action",
    "training_stream",
    "transcript",
    "write_jsonl",
]

STOP = "\n"

#: Slices of each suite, in report order.
SUITES: dict[str, tuple[str, ...]] = {
    "workflow": ("short", "long", "constraint-retention"),
    "transactions": ("numeric", "temporal"),
    "structured-output": ("flat", "nested"),
}
SLICES: dict[str, str] = {name: suite for suite, names in SUITES.items() for name in names}

#: Cases per eval slice: enough that a clean candidate can PASS at a 2-point tolerance
#: when it flips nothing (60 cases leave every slice INCONCLUSIVE).
EVAL_SIZES: dict[str, int] = {
    "short": 300,
    "long": 300,
    "constraint-retention": 300,
    "numeric": 300,
    "temporal": 300,
    "flat": 300,
    "nested": 300,
}

KEYS = string.ascii_lowercase
LONG_STEPS = (6, 7)
SHORT_STEPS = (1, 2)
TRANSACTION_STEPS = (6, 7)
#: Training draws every length from 1 to this, so each eval length is covered.
MAX_TRAIN_STEPS = 8


@dataclass(frozen=True)
class AgentCase:
    """One case of a suite.

    Attributes:
        slice: One of :data:`SLICES`.
        task: For trajectories, the environment's constructor arguments
            (``{"cap", "requests"}`` or ``{"rule", "events"}``); for
            structured output, ``{"prompt"}``.
        expected: What the suite's check compares with: the final store, the
            flagged event indices, or the JSON value and schema.
    """

    slice: str
    task: dict[str, Any]
    expected: dict[str, Any]

    @property
    def suite(self) -> str:
        return SLICES[self.slice]

    @property
    def key(self) -> str:
        """The case's content, canonical: what disjointness is decided on."""
        return _key(self.suite, self.task)

    @property
    def id(self) -> str:
        """Stable id from content, e.g. ``long-1f3a9c0b2d4e``."""
        return f"{self.slice}-{hashlib.sha256(self.key.encode()).hexdigest()[:12]}"

    def to_row(self) -> dict[str, Any]:
        """The JSONL row the suite reads with ``load_cases``."""
        if self.suite == "structured-output":
            return {
                "id": self.id,
                "slice": self.slice,
                "prompt": self.task["prompt"],
                "expected": self.expected["value"],
                "schema": self.expected["schema"],
            }
        return {"id": self.id, "slice": self.slice, "task": self.task, "expected": self.expected}

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> AgentCase:
        if SLICES[row["slice"]] == "structured-output":
            case = cls(
                row["slice"], {"prompt": row["prompt"]}, {"value": row["expected"], "schema": row["schema"]}
            )
        else:
            case = cls(row["slice"], row["task"], row["expected"])
        if row.get("id", case.id) != case.id:
            raise ValueError(f"id {row['id']!r} does not match content ({case.id!r})")
        return case


def _key(suite: str, task: dict[str, Any]) -> str:
    return json.dumps([suite, task], sort_keys=True, separators=(",", ":"))


def prefix_keys(case: AgentCase) -> list[str]:
    """Keys of the case and of each of its prefixes (first m requests or events, m >= 1)."""
    if case.suite == "structured-output":
        return [case.key]
    field = "requests" if case.suite == "workflow" else "events"
    steps = case.task[field]
    return [_key(case.suite, {**case.task, field: steps[:m]}) for m in range(1, len(steps) + 1)]


# --------------------------------------------------------------------------
# Environments and the right actions.
# --------------------------------------------------------------------------


def environment(case: AgentCase) -> Any:
    """The case's environment (a plain object with the Trajectory methods)."""
    if case.suite == "workflow":
        return workflow_env.KeyValueTask(**case.task)
    if case.suite == "transactions":
        return transactions_env.EventStream(**case.task)
    raise ValueError(f"{case.slice!r} is a single-step slice: it has no environment")


def right_action(case: AgentCase, state: dict[str, Any]) -> str:
    """The action a perfect agent takes in ``state``."""
    step = len(state["history"])
    if case.suite == "workflow":
        op, arg = case.task["requests"][step].split()
        if op == "del":
            return f"drop {arg}"
        return f"deny {arg[0]}" if int(arg[1]) > case.task["cap"] else f"put {arg}"
    rule, events = case.task["rule"], case.task["events"]
    return "flag" if transactions_env.violates(rule, events, step) else "ok"


@dataclass(frozen=True)
class Transcript:
    """A case played perfectly, as one training sequence.

    Attributes:
        text: The last step's prompt, its reply and ``"\\n"``.
        spans: ``(start, end)`` character ranges of each reply and its ``"\\n"``
            (the supervised part); characters are tokens, the tokenizer being
            byte level without merges and the text ASCII.
        prompts: Each step's prompt (a prefix of ``text``).
        replies: Each step's reply.
        final_state: The environment's state after the last step (None for
            a single-step case).
    """

    text: str
    spans: tuple[tuple[int, int], ...]
    prompts: tuple[str, ...]
    replies: tuple[str, ...]
    final_state: dict[str, Any] | None


def transcript(case: AgentCase) -> Transcript:
    """Play ``case`` with the right action at every step.

    Asserts the property that lets one sequence teach every step: each
    step's prompt starts with the previous prompt, its reply and ``"\\n"``.
    """
    if case.suite == "structured-output":
        prompt = case.task["prompt"]
        reply = _compact(case.expected["value"])
        text = prompt + reply + STOP
        return Transcript(text, ((len(prompt), len(text)),), (prompt,), (reply,), None)
    env = environment(case)
    state = env.initial_state()
    prompts: list[str] = []
    replies: list[str] = []
    while not env.done(state):
        prompt = env.render(state)
        if prompts:
            assert prompt.startswith(prompts[-1] + replies[-1] + STOP), (prompts[-1], prompt)
        reply = right_action(case, state)
        prompts.append(prompt)
        replies.append(reply)
        state = env.apply(state, reply)
    text = prompts[-1] + replies[-1] + STOP
    spans = tuple((len(p), len(p) + len(r) + len(STOP)) for p, r in zip(prompts, replies, strict=True))
    return Transcript(text, spans, tuple(prompts), tuple(replies), state)


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


# --------------------------------------------------------------------------
# Generators. Each takes a ``random.Random`` so that callers own the seed.
# --------------------------------------------------------------------------


def _workflow(rng: random.Random, slice_name: str, steps: int, over_at_end: bool) -> AgentCase:
    """A conversation of ``steps`` requests under ``cap C``.

    Each ``set`` uses a fresh key; a ``del`` (probability 0.2 once something
    is stored) removes a stored key. With ``over_at_end`` every value is
    within the cap except the last request's, which is above it: the
    constraint said at step one decides the last action and no earlier one.
    Otherwise values are uniform over 0-9, so about half are refused.
    """
    cap = rng.randint(2, 7)
    free = list(KEYS)
    rng.shuffle(free)
    stored: list[str] = []
    requests: list[str] = []
    for step in range(steps):
        last = step == steps - 1
        if stored and not last and rng.random() < 0.2:
            key = stored.pop(rng.randrange(len(stored)))
            requests.append(f"del {key}")
            continue
        key = free.pop()
        if over_at_end:
            value = rng.randint(cap + 1, 9) if last else rng.randint(0, cap)
        else:
            value = rng.randrange(10)
        if value <= cap:
            stored.append(key)
        requests.append(f"set {key}{value}")
    task = {"cap": cap, "requests": requests}
    state = transcript(AgentCase(slice_name, task, {})).final_state
    assert state is not None
    return AgentCase(slice_name, task, {"store": state["store"]})


def _numeric_events(rng: random.Random, steps: int) -> tuple[str, list[str]]:
    limit = rng.randint(20, 89)
    amounts = []
    for _ in range(steps):
        if rng.random() < 0.5:
            # Near the limit, where a comparison of the units digit decides.
            amounts.append(min(99, max(10, limit + rng.randint(-9, 9))))
        else:
            amounts.append(rng.randint(10, 99))
    return f"limit {limit}", [f"pay {a}" for a in amounts]


def _temporal_events(rng: random.Random, steps: int) -> tuple[str, list[str]]:
    cap = rng.randint(1, 3)
    hour = rng.randint(0, 4)
    hours = []
    for _ in range(steps):
        hours.append(hour)
        # Stay in the hour often enough that runs longer than the cap occur.
        if rng.random() < 0.35:
            hour = min(9, hour + rng.choice((1, 1, 2)))
    return f"max {cap}/h", [f"h{h}" for h in hours]


def _transactions(rng: random.Random, slice_name: str, steps: int) -> AgentCase:
    events = _numeric_events if slice_name == "numeric" else _temporal_events
    rule, stream = events(rng, steps)
    task = {"rule": rule, "events": stream}
    flagged = [i for i in range(steps) if transactions_env.violates(rule, stream, i)]
    return AgentCase(slice_name, task, {"flagged": flagged})


#: Fields of the structured-output records and their JSON types.
FIELD_TYPES: dict[str, str] = {
    "id": "integer",
    "qty": "integer",
    "age": "integer",
    "tag": "string",
    "code": "string",
    "ok": "boolean",
    "vip": "boolean",
}
GROUPS = ("user", "item")


def _field_value(rng: random.Random, name: str) -> tuple[str, Any]:
    """(as written in the prompt, as JSON) for one field."""
    kind = FIELD_TYPES[name]
    if kind == "integer":
        n = rng.randrange(10)
        return str(n), n
    if kind == "string":
        s = rng.choice(string.ascii_lowercase)
        return s, s
    b = rng.random() < 0.5
    return ("y" if b else "n"), b


def _schema(value: dict[str, Any]) -> dict[str, Any]:
    """The JSON Schema a record must match: these fields, these types, nothing else."""
    props = {k: _schema(v) if isinstance(v, dict) else {"type": FIELD_TYPES[k]} for k, v in value.items()}
    return {"type": "object", "properties": props, "required": list(value), "additionalProperties": False}


def _structured(rng: random.Random, slice_name: str) -> AgentCase:
    """``json id=4 tag=b ok=y ->`` -> ``{"id":4,"tag":"b","ok":true}``.

    Nested: two of the fields are written ``user.age=3 user.ok=n`` and
    belong in an object ``"user":{"age":3,"ok":false}`` placed where its
    first field is.
    """
    names = list(FIELD_TYPES)
    if slice_name == "flat":
        fields = rng.sample(names, rng.randint(2, 4))
        parts, value = [], {}
        for name in fields:
            written, val = _field_value(rng, name)
            parts.append(f"{name}={written}")
            value[name] = val
    else:
        group = rng.choice(GROUPS)
        chosen = rng.sample(names, rng.randint(3, 4))
        inner, outer = chosen[:2], chosen[2:]
        order = [*outer]
        order.insert(rng.randint(0, len(order)), group)
        parts, value = [], {}
        for name in order:
            if name == group:
                sub = {}
                for f in inner:
                    written, val = _field_value(rng, f)
                    parts.append(f"{group}.{f}={written}")
                    sub[f] = val
                value[group] = sub
            else:
                written, val = _field_value(rng, name)
                parts.append(f"{name}={written}")
                value[name] = val
    prompt = f"json {' '.join(parts)} ->"
    return AgentCase(slice_name, {"prompt": prompt}, {"value": value, "schema": _schema(value)})


def make_case(slice_name: str, rng: random.Random, *, steps: int | None = None) -> AgentCase:
    """One eval-distribution case of ``slice_name`` (``steps`` overrides its length)."""
    if slice_name in ("flat", "nested"):
        return _structured(rng, slice_name)
    if slice_name in ("numeric", "temporal"):
        return _transactions(rng, slice_name, steps or rng.randint(*TRANSACTION_STEPS))
    if slice_name == "short":
        return _workflow(rng, slice_name, steps or rng.randint(*SHORT_STEPS), False)
    if slice_name == "long":
        return _workflow(rng, slice_name, steps or rng.randint(*LONG_STEPS), False)
    if slice_name == "constraint-retention":
        return _workflow(rng, slice_name, steps or rng.randint(*LONG_STEPS), True)
    raise ValueError(f"unknown slice {slice_name!r}; expected one of {tuple(SLICES)}")


def generate(slice_name: str, n: int, seed: int, *, exclude: Iterable[str] = ()) -> list[AgentCase]:
    """``n`` distinct cases of one slice, reproducible from ``seed``.

    ``exclude`` holds case keys that must not be drawn (another split's).
    """
    rng = random.Random(f"{seed}:{slice_name}")
    banned = set(exclude)
    out: list[AgentCase] = []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 100 * n + 1000:
            raise RuntimeError(f"could not draw {n} distinct {slice_name} cases")
        case = make_case(slice_name, rng)
        if case.key in banned:
            continue
        banned.add(case.key)
        out.append(case)
    return out


def eval_sets(seed: int) -> dict[str, list[AgentCase]]:
    """Every slice's eval cases (the suites' data files)."""
    return {name: generate(name, EVAL_SIZES[name], seed) for name in SLICES}


#: Training mixture: (slice generator, weight, lengths drawn from). Training
#: lengths run from 1 to MAX_TRAIN_STEPS for every trajectory family, and the
#: retention-style conversations (only the last value above the cap) have their own share.
TRAIN_MIXTURE: tuple[tuple[str, float, tuple[int, int] | None], ...] = (
    ("short", 1.0, (1, MAX_TRAIN_STEPS)),
    ("constraint-retention", 0.6, (2, MAX_TRAIN_STEPS)),
    ("numeric", 1.3, (1, MAX_TRAIN_STEPS)),
    ("temporal", 1.1, (1, MAX_TRAIN_STEPS)),
    ("flat", 0.7, None),
    ("nested", 0.9, None),
)


def training_stream(seed: int, *, exclude: Iterable[str] = ()) -> Iterator[AgentCase]:
    """An endless stream of training cases; none of them, nor any prefix, is in ``exclude``.

    The ``short`` generator drawn at training lengths (1-8 steps) is the
    general workflow distribution (values uniform over 0-9).
    """
    rng = random.Random(seed)
    banned = frozenset(exclude)
    names = [name for name, _, _ in TRAIN_MIXTURE]
    weights = [w for _, w, _ in TRAIN_MIXTURE]
    lengths = {name: span for name, _, span in TRAIN_MIXTURE}
    while True:
        name = rng.choices(names, weights)[0]
        span = lengths[name]
        case = make_case(name, rng, steps=rng.randint(*span) if span else None)
        if not banned.intersection(prefix_keys(case)):
            yield case


# --------------------------------------------------------------------------
# JSONL.
# --------------------------------------------------------------------------


def write_jsonl(path: str | Path, cases: Iterable[AgentCase]) -> None:
    """One JSON object per line (see :meth:`AgentCase.to_row`)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("w", encoding="utf-8", newline="\n") as fh:
        for case in cases:
            fh.write(json.dumps(case.to_row(), separators=(", ", ": ")) + "\n")


def read_jsonl(path: str | Path) -> list[AgentCase]:
    """Cases written by :func:`write_jsonl` (ids re-verified)."""
    with Path(path).open(encoding="utf-8") as fh:
        return [AgentCase.from_row(json.loads(line)) for line in fh if line.strip()]


def data_path(slice_name: str) -> Path:
    """Where a slice's eval file lives: ``example_suites/<suite>/data/<slice>.jsonl``."""
    return SUITES_DIR / SLICES[slice_name] / "data" / f"{slice_name}.jsonl"


# --------------------------------------------------------------------------
# Playing cases step-synchronously, and checking them.
# --------------------------------------------------------------------------


@dataclass
class Played:
    """How one case went on one model.

    Attributes:
        replies: The model's reply at each step (cut at the stop string).
        final_state: The environment's state at the end (None for single-step cases).
        failed_step: The step (1-based) whose reply did not parse, if one did not.
    """

    replies: list[str]
    final_state: dict[str, Any] | None = None
    failed_step: int | None = None


#: ``generate_fn(prompts, max_new_tokens) -> replies``: a model, batched.
GenerateFn = Callable[[list[str], int], list[str]]


def play(cases: list[AgentCase], generate_fn: GenerateFn) -> list[Played]:
    """Run cases the way the plugin does: step k of every live case is one batch.

    ``generate_fn(prompts, max_new_tokens)`` returns one raw reply per prompt;
    each is cut at :data:`STOP` and handed to the environment, which renders
    the next prompt from the new state.
    """
    played = [Played([]) for _ in cases]
    single = [i for i, c in enumerate(cases) if c.suite == "structured-output"]
    if single:
        outs = generate_fn([cases[i].task["prompt"] for i in single], STRUCTURED_MAX_NEW_TOKENS)
        for i, out in zip(single, outs, strict=True):
            played[i].replies.append(out.split(STOP, 1)[0])
    live: dict[int, tuple[Any, dict[str, Any]]] = {}
    for i, case in enumerate(cases):
        if case.suite != "structured-output":
            env = environment(case)
            live[i] = (env, env.initial_state())
    while live:
        order = [i for i, (env, state) in live.items() if not env.done(state)]
        for i in set(live) - set(order):
            played[i].final_state = live.pop(i)[1]
        if not order:
            break
        budget = max(_max_new_tokens(cases[i]) for i in order)
        outs = generate_fn([live[i][0].render(live[i][1]) for i in order], budget)
        for i, out in zip(order, outs, strict=True):
            env, state = live[i]
            reply = out.split(STOP, 1)[0]
            played[i].replies.append(reply)
            try:
                live[i] = (env, env.apply(state, reply))
            except AssertionError:
                played[i].failed_step = len(played[i].replies)
                played[i].final_state = state
                del live[i]
    return played


#: Generation budgets, in tokens (= characters): the longest reply, its "\n" and slack.
STRUCTURED_MAX_NEW_TOKENS = 56


def _max_new_tokens(case: AgentCase) -> int:
    if case.suite == "workflow":
        return int(workflow_env.MAX_NEW_TOKENS)
    if case.suite == "transactions":
        return int(transactions_env.MAX_NEW_TOKENS)
    return STRUCTURED_MAX_NEW_TOKENS


def check(case: AgentCase, played: Played) -> bool:
    """Whether the model completed the case (what the suite's test body asserts)."""
    if played.failed_step is not None:
        return False
    if case.suite == "structured-output":
        try:
            got = json.loads(played.replies[0])
        except ValueError:
            return False
        return _same_json(got, case.expected["value"])
    state = played.final_state
    assert state is not None
    if case.suite == "workflow":
        cap = case.task["cap"]
        return state["store"] == case.expected["store"] and all(v <= cap for v in state["store"].values())
    return bool(state["flagged"] == case.expected["flagged"])


def _same_json(a: Any, b: Any) -> bool:
    """Equal as JSON values: ``true`` is not ``1``, and dicts compare by key."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_json(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b
