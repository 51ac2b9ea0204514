"""Every careless or hostile input gets one clear line (exit 2, nothing created) or a correct result.

The cases and their classifier are in support/fuzz_cases.py; ``python -m support.fuzz_verdicts`` counts
the verdicts of any checkout (the closing notes give the counts before and after).
"""

import pytest

from support.fuzz_cases import all_cases, run_case

CASES = all_cases()


def test_there_are_at_least_100_cases_in_every_group():
    assert len(CASES) >= 100
    assert {c.group for c in CASES} >= {"yaml", "paths", "values", "machine", "flags", "injection", "data",
                                        "report", "binds", "submit", "model", "scaling"}
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_case_gets_its_verdict(case, tmp_path):
    outcome = run_case(case, tmp_path)
    assert outcome.verdict == case.expect, (
        f"{case.id}: {outcome.verdict} (exit {outcome.code}, created {outcome.created[:3]})\n{outcome.stderr[-1500:]}")
