"""The planner's search for the largest batch a compiled stage allows when the compiler decides
(``--compiler tpu``), worked by hand on a stage whose compiled peak is ``10 + b`` GiB: the
analytic guess is compiled first, then the line through it and the config's batch names the
next try, with few compiles (a TPU's take minutes)."""

import pytest

from jaxrank.perf import planner

GIB = 2**30


@pytest.fixture
def compiles(monkeypatch):
    """Every compile of the stage, by batch; its peak is ``10 + b`` GiB."""
    seen = []

    def compiled_stage(setting, stage, b):
        seen.append(b)
        return {"peak": (10 + b) * GIB}

    monkeypatch.setattr(planner, "compiled_stage", compiled_stage)
    return seen


def test_an_analytic_guess_that_compiles_within_the_chip_is_kept(compiles):
    # config's batch 4 compiled at 14 GiB; the guess 6 compiles at 16 GiB: fits 16 exactly
    assert planner._largest_compiled(None, None, {4: 14 * GIB}, 6, 16 * GIB) == (6, 16 * GIB)
    assert compiles == [6]


def test_an_optimistic_guess_is_corrected_along_the_line(compiles):
    # the guess 8 compiles at 18 GiB; the line through (4, 14) and (8, 18) meets 16 GiB at 6
    assert planner._largest_compiled(None, None, {4: 14 * GIB}, 8, 16 * GIB) == (6, 16 * GIB)
    assert compiles == [8, 6]


def test_when_even_one_does_not_fit_the_answer_is_zero(compiles):
    assert planner._largest_compiled(None, None, {4: 14 * GIB}, 1, 10.5 * GIB) == (0, 0.0)
    assert compiles == [1]
