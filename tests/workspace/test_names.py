"""The one rule per kind of name that becomes a workspace folder."""

from __future__ import annotations

import pytest

from chattune.errors import EndpointError, InvalidParameter
from chattune.workspace.names import COMPUTE_NAME, MODEL_NAME, MODEL_VERSION, VM_SIZE


@pytest.mark.parametrize("rule", [MODEL_NAME, MODEL_VERSION, COMPUTE_NAME, VM_SIZE])
@pytest.mark.parametrize("bad", ["..", "../x", "a/b", "/abs", ".x", "", "a b", "x\n"])
def test_no_rule_admits_a_path(rule, bad: str) -> None:
    with pytest.raises(InvalidParameter, match=f"{rule.what} .* is not valid") as err:
        rule.check(bad)
    assert err.value.fix == f"use {rule.rule}."


def test_good_names_pass_and_the_error_class_can_be_chosen() -> None:
    assert MODEL_NAME.check("Phi-3-mini-4k-instruct") == "Phi-3-mini-4k-instruct"
    assert MODEL_VERSION.check("12") == "12"
    assert COMPUTE_NAME.check("gpu-cluster") == "gpu-cluster"
    with pytest.raises(InvalidParameter):
        COMPUTE_NAME.check("gpu-")  # no trailing hyphen (Azure's rule)
    with pytest.raises(EndpointError):
        MODEL_NAME.check("../x", error=EndpointError)
    assert MODEL_NAME.check("a" * 255) and MODEL_VERSION.check("1" * 64)
    with pytest.raises(InvalidParameter):
        MODEL_VERSION.check("1" * 65)
