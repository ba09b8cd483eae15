"""The per-model fixtures are given to quant case bodies only: anywhere else, one line naming the test."""

from __future__ import annotations

import pytest

from .fakes import gate_args, model


@pytest.mark.parametrize("name", ["output", "final_state", "transcript"])
def test_a_plain_test_asking_for_a_run_fixture_fails_naming_itself(
    pytester: pytest.Pytester, name: str
) -> None:
    pytester.makepyfile(f"def test_plain({name}):\n    pass\n")
    result = pytester.runpytest(*gate_args(model(pytester, "ref", {"1+1=": "2"})))
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [f"*test_*.py::test_plain: the `{name}` fixture is only given to @quant_case tests*"]
    )


def test_a_fixture_asking_for_output_fails_naming_itself_and_the_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest
        from pytest_quantgate import quant_case

        @pytest.fixture
        def parsed(output):
            return output.strip()  # would be the placeholder, not a model's output

        @quant_case("prompt", ["1+1="], max_new_tokens=2)
        def test_sum(prompt, output, parsed):
            assert parsed == "2"
        """
    )
    result = pytester.runpytest(*gate_args(model(pytester, "ref", {"1+1=": "2"})))
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*test_sum?1+1=?: the fixture `parsed` requests `output`, which only the test function of a*"]
    )


def test_a_quant_case_body_gets_each_models_output(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        from pytest_quantgate import quant_case

        @quant_case("prompt", ["1+1="], max_new_tokens=2)
        def test_sum(prompt, output, transcript, final_state):
            assert output == "2" and transcript[0].reply == "2" and final_state is None
        """
    )
    result = pytester.runpytest(
        *gate_args(model(pytester, "ref", {"1+1=": "2"}), model(pytester, "cand", {"1+1=": "2"}))
    )
    result.assert_outcomes(passed=1 + 2)  # and the gate's tests: the candidate's load, its ALL row
