"""benchmarks/bench_real_model.py's sides do what the plugin does: same cases, batches, stops and check.

The benchmark compares the plugin's outputs with a plain script's and
lm-evaluation-harness's; a difference must come from the tools, not from the
benchmark feeding them other cases, other batches or other settings. (The
benchmark itself needs the real model and minutes; it is run by hand.)
"""

from __future__ import annotations

import ast
import configparser
import json
import sys
from pathlib import Path

import pytest

from pytest_quantgate import checks
from pytest_quantgate.core.runner import _groups, truncate_at_stop
from pytest_quantgate.values.prompts import GenerationSettings, normalize_prompt

REPO = Path(__file__).resolve().parents[2]
SUITE = REPO / "example_suites" / "chat"
sys.path.insert(0, str(REPO / "benchmarks"))

import bench_real_model  # noqa: E402
import real_model_cases as rmc  # noqa: E402


def _quant_case_keywords() -> dict[str, dict[str, object]]:
    """test_chat.py's test name -> the literal keywords of its ``quant_case`` (names resolved)."""
    tree = ast.parse((SUITE / "test_chat.py").read_text())
    names = {
        t.id: ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
        for t in node.targets
        if isinstance(t, ast.Name)
    }
    out = {}
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef):
            continue
        for deco in node.decorator_list:
            if isinstance(deco, ast.Call) and getattr(deco.func, "id", None) == "quant_case":
                out[node.name] = {
                    k.arg: names[k.value.id] if isinstance(k.value, ast.Name) else ast.literal_eval(k.value)
                    for k in deco.keywords
                    if k.arg in ("max_new_tokens", "stop")
                }
    return out


def test_the_settings_are_the_suites() -> None:
    keywords = _quant_case_keywords()
    assert keywords["test_ticket_number_copied"] == {
        "max_new_tokens": rmc.SLICES["extract"][1],
        "stop": rmc.STOP,
    }
    assert keywords["test_city_looked_up"] == {"max_new_tokens": rmc.SLICES["lookup"][1], "stop": rmc.STOP}
    ini = configparser.ConfigParser()
    ini.read(SUITE / "pytest.ini")
    assert int(ini["pytest"]["quant_batch_size"]) == rmc.BATCH_SIZE


def test_the_cases_are_the_suites_single_turn_cases() -> None:
    cases = rmc.load_cases()
    assert [c.slice for c in cases] == ["extract"] * 80 + ["lookup"] * 80
    assert len({c.id for c in cases}) == 160
    rows = [json.loads(line) for line in (SUITE / "data" / "extract.jsonl").read_text().splitlines()]
    first = cases[0]
    assert (first.id, first.expected) == (rows[0]["id"], rows[0]["expected"])
    assert first.chat() == [{"role": "user", "content": rows[0]["prompt"]}]
    assert [c.id for c in rmc.load_cases(3)] == [c.id for c in cases[:3] + cases[80:83]]


def test_the_batches_are_the_plugin_runners() -> None:
    """The runner's groups (by settings, longest prompt first, ties in order) cut every 40."""
    cases = rmc.load_cases()
    pending = {}
    for case in cases:
        prompt = case.chat()[0]["content"] if case.slice == "extract" else case.chat()
        pending[case.id] = (normalize_prompt(prompt), GenerationSettings(case.max_new_tokens, (rmc.STOP,)))
    expected = [group[i : i + 40] for group in _groups(pending) for i in range(0, len(group), 40)]
    got = [[c.id for c in batch] for batch in rmc.batches(cases)]
    assert got == expected
    assert [len(b) for b in got] == [40, 40, 40, 40]
    # Not the suite's order: the prompts differ in length, and the sort is what is checked.
    assert got[0] != [c.id for c in cases[:40]]


@pytest.mark.parametrize(
    "text", ["The ticket number is 27611", "Oslo. It is", "a.b.c", "", "no stop here", ". at the start"]
)
def test_stop_and_check_are_the_plugins(text: str) -> None:
    assert rmc.truncate_at_stop(text) == truncate_at_stop(text, (rmc.STOP,))
    case = rmc.Case("x", "lookup", ((("content", "q"), ("role", "user")),), "Oslo", 10)
    for output in (text, f"  {text}\n", "Ｏslo", "O slo"):
        try:
            checks.contains(output, case.expected)
            plugin = True
        except AssertionError:
            plugin = False
        assert rmc.passes(case, output) is plugin, output


def test_the_plugins_outputs_are_read_from_its_report_by_case_id() -> None:
    report = {
        "models": {"smollm2": {"torch": "t", "load_seconds": 1.5, "generate_seconds": 2.0}},
        "cases": [
            {
                "nodeid": "test_chat.py::test_city_looked_up[lookup-1cf6505812b6]",
                "outcomes": {"smollm2": {"output": "Grace lives in Vienna"}},
            }
        ],
    }
    outputs, facts = bench_real_model.plugin_outputs(report)
    assert outputs == {"lookup-1cf6505812b6": "Grace lives in Vienna"}
    assert facts["side"] == "plugin" and facts["load_seconds"] == 1.5
    cases = [c for c in rmc.load_cases() if c.id == "lookup-1cf6505812b6"]
    assert bench_real_model.accuracy(cases, outputs) == {"lookup": (1, 1)}
    assert bench_real_model.accuracy(cases, {}) == {"lookup": (0, 1)}
    assert (
        bench_real_model.compare(cases, outputs, {"lookup-1cf6505812b6": "Grace lives in Vienna."}) == cases
    )
    assert bench_real_model.compare(cases, outputs, dict(outputs)) == []
