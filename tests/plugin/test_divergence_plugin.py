"""Token divergence (``--quant-divergence``) and the noise floor (``--quant-noise-floor``) end to end.

The runs are on scripted ``fake:`` models, whose teacher-forced scores come
from a known distribution (``backends/fake.py``): a candidate that replies
like the reference diverges by exactly 0, one that replies otherwise
diverges exactly on the cases it changed.
"""

from __future__ import annotations

import json
import math

import pytest

from pytest_quantgate.report.json_report import SCHEMA_FILE

from .fakes import (
    XDIST_MODES,
    Slice,
    answers,
    cases,
    events,
    gate_args,
    model,
    read_report,
    suite_source,
)
from .test_trajectories import ECHO

ARITH = cases("arith", 60)
RECALL = cases("recall", 60)
REPLIES = {**answers(ARITH), **answers(RECALL)}


def _validate(data: dict) -> None:
    """The report against its schema, where jsonschema is installed (the oldest-pytest job has none)."""
    try:
        import jsonschema
    except ImportError:
        return
    jsonschema.validate(data, json.loads(SCHEMA_FILE.read_text(encoding="utf-8")))


def _rows(data: dict, label: str) -> dict[str, dict]:
    (cand,) = [c for c in data["candidates"] if c["label"] == label]
    return {row["slice"]: row for row in cand["divergence"]}


@pytest.mark.parametrize("mode", ["no-xdist", "n2"])
def test_divergence_is_zero_for_an_identical_model_and_found_where_accuracy_dropped(
    pytester: pytest.Pytester, mode: str
) -> None:
    pytester.makepyfile(test_suite=suite_source(Slice("arith", ARITH), Slice("recall", RECALL)))
    ref = model(pytester, "ref", REPLIES)
    same = model(pytester, "same", REPLIES)
    bad = model(pytester, "bad", {**answers(ARITH, wrong=range(20)), **answers(RECALL)})
    report = pytester.path / "gate.json"
    result = pytester.runpytest(
        *XDIST_MODES[mode], *gate_args(ref, same, bad), "--quant-divergence", f"--quant-report={report}"
    )
    data = read_report(report)
    _validate(data)
    same_rows, bad_rows = _rows(data, "same"), _rows(data, "bad")
    for row in same_rows.values():
        assert row["mean_kl"] == 0 and row["max_kl"] == 0 and row["top1"] == 1.0 and row["mean_dp"] == 0
    assert bad_rows["recall"]["mean_kl"] == 0 and bad_rows["recall"]["top1"] == 1.0
    assert bad_rows["arith"]["mean_kl"] > 0 and bad_rows["arith"]["low"] > 0
    assert bad_rows["arith"]["top1"] < 1.0
    assert (
        bad_rows["arith"]["worst"]["case"].endswith("[arith-0]")
        or "[arith-" in bad_rows["arith"]["worst"]["case"]
    )
    # Only the 20 changed cases diverge; each of them on every token of the reference's reply.
    by_case = {c["nodeid"]: c["token_divergence"]["bad"] for c in data["cases"]}
    changed = {k for k, d in by_case.items() if d["kl_sum"] > 0}
    assert changed == {k for k in by_case if any(f"[arith-{i}]" in k for i in range(20))}
    assert bad_rows["arith"]["cases"] == 60 and bad_rows["ALL"]["cases"] == 120
    # The terminal shows the second table under each candidate's accuracy table.
    out = result.stdout.str()
    assert out.count("token divergence from ref") == 2
    assert "largest mean KL" in out


def test_known_kl_of_one_changed_token(pytester: pytest.Pytester) -> None:
    """The fake's distributions give the KL of a changed first token in closed form."""
    items = cases("one", 3)
    pytester.makepyfile(test_suite=suite_source(Slice("one", items)))
    ref = model(pytester, "ref", {items[0].prompt: "1", items[1].prompt: "2", items[2].prompt: "3"})
    cand = model(pytester, "cand", {items[0].prompt: "9", items[1].prompt: "2", items[2].prompt: "3"})
    report = pytester.path / "gate.json"
    pytester.runpytest(
        "-p", "no:xdist", *gate_args(ref, cand), "--quant-divergence", f"--quant-report={report}"
    )
    data = read_report(report)
    (first,) = [c for c in data["cases"] if c["nodeid"].endswith("[one-0]")]
    # Reference: p = 1/2 on "1", 1/510 on each other id; its top 32 are "1" and ids 0..30.
    # The candidate puts 1/2 on "9" (in the reference's tail) and 1/510 on each other id.
    p, q = 0.5, 0.5 / 255
    tail_p = 1 - p - 31 * q
    tail_q = 1 - 32 * q
    expected = p * math.log(p / q) + tail_p * math.log(tail_p / tail_q)
    assert first["token_divergence"]["cand"]["kl_sum"] == pytest.approx(expected, abs=1e-9)
    assert first["token_divergence"]["cand"]["top1"] == 0


def test_a_warm_run_scores_candidates_without_loading_the_reference(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite=suite_source(Slice("arith", ARITH)))
    ref = model(pytester, "ref", answers(ARITH))
    bad = model(pytester, "bad", answers(ARITH, wrong=range(10)))
    args = [*gate_args(ref, bad), "--quant-divergence", "--quant-cache=on", "-p", "no:xdist"]
    cold, warm = pytester.path / "cold.json", pytester.path / "warm.json"
    pytester.runpytest(*args, f"--quant-report={cold}")
    before = len(events(pytester))
    result = pytester.runpytest(*args, f"--quant-report={warm}")
    loads = [e for e in events(pytester)[before:] if e[1] == "load"]
    assert [m for m, _, _ in loads] == ["bad"], result.stdout.str()
    assert _rows(read_report(warm), "bad") == _rows(read_report(cold), "bad")


def _spaced(items: list) -> dict[str, str]:
    """Replies with a leading space: the check (``output.strip() == expected``) still passes."""
    return {c.prompt: " " + c.expected for c in items}


def test_max_kl_fails_a_slice_whose_kl_is_significantly_above_it(pytester: pytest.Pytester) -> None:
    source = suite_source(Slice("arith", ARITH), Slice("recall", RECALL))
    source = source.replace("@quant_slice('arith')", "@quant_slice('arith', max_kl=0.05)")
    source = source.replace("@quant_slice('recall')", "@quant_slice('recall', max_kl=0.05)")
    pytester.makepyfile(test_suite=source)
    # The candidate drops the reference's leading space on every arith case: every case still
    # passes its check, so accuracy sees nothing, while every case diverges on its first token.
    ref = model(pytester, "ref", {**_spaced(ARITH), **answers(RECALL)})
    bad = model(pytester, "bad", REPLIES)
    report = pytester.path / "gate.json"
    result = pytester.runpytest(
        "-p", "no:xdist", *gate_args(ref, bad), "--quant-divergence", f"--quant-report={report}"
    )
    assert result.ret == 1
    data = read_report(report)
    rows = _rows(data, "bad")
    assert rows["arith"]["exceeds"] and rows["arith"]["threshold"] == 0.05 and rows["arith"]["low"] > 0.05
    assert rows["arith"]["top1"] < 0.5
    assert not rows["recall"]["exceeds"]
    assert [s["verdict"] for s in data["candidates"][0]["slices"]] != ["REGRESSED"] * 3
    out = " ".join(result.stdout.str().split())
    assert "FAILED on divergence: mean token KL" in out and "above the slice's max_kl 0.05" in out
    assert "FAILED: slice 'arith': mean KL" in out
    assert "FAILED ::quantgate::bad::arith" in out


def test_max_kl_must_be_a_positive_number(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_suite=suite_source(Slice("arith", ARITH[:2])).replace(
            "@quant_slice('arith')", "@quant_slice('arith', max_kl=-1)"
        )
    )
    result = pytester.runpytest("-p", "no:xdist")
    result.stdout.fnmatch_lines(["*slice max_kl must be a number above 0 (nats per token), got -1*"])


def test_inconclusive_accuracy_with_kl_above_the_floor_is_noted(pytester: pytest.Pytester) -> None:
    items = cases("few", 12)
    pytester.makepyfile(test_suite=suite_source(Slice("few", items)))
    ref = model(pytester, "ref", _spaced(items))
    cand = model(pytester, "cand", answers(items))
    report = pytester.path / "gate.json"
    result = pytester.runpytest(
        "-p", "no:xdist", *gate_args(ref, cand), "--quant-divergence", f"--quant-report={report}"
    )
    data = read_report(report)
    assert data["candidates"][0]["slices"][0]["verdict"] == "INCONCLUSIVE"
    assert _rows(data, "cand")["few"]["unseen_damage"] is True
    assert "divergence sees damage that accuracy cannot yet show" in " ".join(result.stdout.str().split())


def test_divergence_off_by_default(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite=suite_source(Slice("arith", ARITH[:5])))
    ref = model(pytester, "ref", answers(ARITH[:5]))
    report = pytester.path / "gate.json"
    result = pytester.runpytest(
        "-p", "no:xdist", *gate_args(ref, ref.replace("ref=", "same=")), f"--quant-report={report}"
    )
    data = read_report(report)
    assert "divergence" not in data["candidates"][0]
    assert "token divergence" not in result.stdout.str()


@pytest.mark.parametrize("mode", ["no-xdist", "n2"])
def test_noise_floor_is_zero_for_a_deterministic_reference(pytester: pytest.Pytester, mode: str) -> None:
    pytester.makepyfile(test_suite=suite_source(Slice("arith", ARITH), Slice("recall", RECALL)))
    ref = model(pytester, "ref", REPLIES)
    bad = model(pytester, "bad", {**answers(ARITH, wrong=range(20)), **answers(RECALL)})
    report = pytester.path / "gate.json"
    result = pytester.runpytest(
        *XDIST_MODES[mode],
        *gate_args(ref, bad),
        "--quant-divergence",
        "--quant-noise-floor",
        f"--quant-report={report}",
    )
    data = read_report(report)
    _validate(data)
    floor = data["noise_floor"]
    assert not floor["unstable"] and floor["warning"] is None
    by_slice = {r["slice"]: r for r in floor["slices"]}
    assert by_slice["ALL"]["cases"] == 120 and by_slice["ALL"]["flips"] == 0
    assert by_slice["ALL"]["divergence"]["mean_kl"] == 0
    assert _rows(data, "bad")["arith"]["noise_floor_kl"] == 0
    out = result.stdout.str()
    assert "noise floor: ref against itself" in out and "bad flips" in out
    assert "greedy decoding is not stable" not in out


def test_noise_floor_warns_when_batching_changes_the_reference(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite=suite_source(Slice("arith", ARITH)))
    # At batch size 1 the reference answers 5 of 60 cases otherwise, as a GPU may.
    solo = {c.prompt: "wrong" for c in ARITH[:5]}
    ref = model(pytester, "ref", answers(ARITH), solo_replies=solo)
    same = model(pytester, "same", answers(ARITH))
    report = pytester.path / "gate.json"
    result = pytester.runpytest(
        "-p", "no:xdist", *gate_args(ref, same), "--quant-noise-floor", f"--quant-report={report}"
    )
    floor = read_report(report)["noise_floor"]
    total = {r["slice"]: r for r in floor["slices"]}["ALL"]
    assert total["flips"] == 5 and total["changed_outputs"] == 5
    assert floor["unstable"] is True
    assert "greedy decoding is not stable here" in " ".join(result.stdout.str().split())


ECHO_CHAIN = (
    ECHO
    + """

@quant_slice("chain")
@quant_case("case, expected", [(Echo("ab"), ["cd", "ef", "gh", "ij"])], prompt="case", max_new_tokens=3)
def test_chain(case, expected, final_state):
    assert final_state["got"] == expected
"""
)


def test_a_trajectory_is_scored_on_every_step_of_the_references_path(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_chain=ECHO_CHAIN)
    reference = {"ab": "cd", "abcd": "ef", "abcdef": "gh", "abcdefgh": "ij"}
    # The candidate parts at step 3; teacher-forced on the reference's path, only step 3 differs.
    parts = {**reference, "abcdef": "xx", "abcdefxx": "yy"}
    ref, cand = model(pytester, "ref", reference), model(pytester, "q", parts, default="zz")
    report = pytester.path / "gate.json"
    pytester.runpytest(
        "-p", "no:xdist", *gate_args(ref, cand), "--quant-divergence", f"--quant-report={report}"
    )
    (case,) = read_report(report)["cases"]
    divergence = case["token_divergence"]["q"]
    # 4 steps of 2 characters each; the 2 characters of step 3 diverge, nothing else.
    assert divergence["tokens"] == 8
    assert [kl > 0 for kl in divergence["kl"]] == [False] * 4 + [True] * 2 + [False] * 2
    assert divergence["top1"] == 6


def test_the_ini_keys_turn_both_on(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite=suite_source(Slice("arith", ARITH[:4])))
    ref = model(pytester, "ref", answers(ARITH[:4]))
    pytester.makeini("[pytest]\nquant_divergence = true\nquant_noise_floor = true\n")
    report = pytester.path / "gate.json"
    pytester.runpytest(
        "-p", "no:xdist", *gate_args(ref, ref.replace("ref=", "same=")), f"--quant-report={report}"
    )
    data = read_report(report)
    assert data["config"]["divergence"] is True and data["config"]["noise_floor"] is True
    assert _rows(data, "same")["ALL"]["mean_kl"] == 0 and data["noise_floor"]["slices"]


def test_the_markdown_and_html_reports_have_the_divergence_and_the_noise_floor(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_suite=suite_source(Slice("arith", ARITH)))
    ref = model(pytester, "ref", answers(ARITH), solo_replies={c.prompt: "wrong" for c in ARITH[:5]})
    bad = model(pytester, "bad", answers(ARITH, wrong=range(10)))
    summary = pytester.path / "summary.md"
    pytester.runpytest(
        "-p",
        "no:xdist",
        *gate_args(ref, bad),
        "--quant-divergence",
        "--quant-noise-floor",
        f"--quant-markdown={summary}",
        "--quant-html=gate.html",
    )
    page = (pytester.path / "gate.html").read_text(encoding="utf-8")
    assert "Token divergence from the reference, teacher-forced on its replies" in page
    assert "<h2>Noise floor: the reference against itself (batch size 1, reverse order)</h2>" in page
    assert "<td>ALL</td><td>60</td><td>5 (8.3%)</td><td>5</td>" in page
    assert "warning: the reference changed its output on 5 of 60 cases" in page
    text = summary.read_text(encoding="utf-8")
    assert "Token divergence (KL in nats/token over the reference's top-32 tokens + the rest):" in text
    assert "| slice | cases | tokens | mean KL |" in text
    assert "### Noise floor: the reference against itself (batch size 1, reverse order)" in text
    assert "| ALL | 60 | 5 (8.3%) | 5 |" in text
    assert "> **warning**: the reference changed its output on 5 of 60 cases" in text


def test_merged_shards_carry_the_divergence_and_the_noise_floor(pytester: pytest.Pytester) -> None:
    """Per-case figures travel in the shards' records: the merge computes the same rows."""
    pytester.makepyfile(test_suite=suite_source(Slice("arith", ARITH), Slice("recall", RECALL)))
    ref = model(pytester, "ref", REPLIES)
    bad = model(pytester, "bad", {**answers(ARITH, wrong=range(20)), **answers(RECALL)})
    args = ["-p", "no:xdist", *gate_args(ref, bad), "--quant-divergence", "--quant-noise-floor"]
    whole = pytester.path / "whole.json"
    pytester.runpytest(*args, f"--quant-report={whole}")
    records = pytester.path / "records"
    for k in (1, 2):
        pytester.runpytest(*args, f"--quant-shard={k}/2", f"--quant-records={records}")
    merged = pytester.path / "merged.json"
    pytester.runpytest(*args, "--quant-merge", str(records), f"--quant-report={merged}")
    expected, got = read_report(whole), read_report(merged)
    assert _rows(got, "bad") == _rows(expected, "bad")
    assert got["noise_floor"] == expected["noise_floor"]
