"""The one rule per kind of name that becomes a workspace folder or file."""

from __future__ import annotations

import pytest

from chattune.errors import EndpointError, InvalidParameter
from chattune.workspace.names import (
    COMPUTE_NAME,
    DEPLOYMENT_NAME,
    ENDPOINT_NAME,
    FILE_ID,
    JOB_NAME,
    MODEL_NAME,
    MODEL_VERSION,
    VM_SIZE,
)

RULES = [
    MODEL_NAME,
    MODEL_VERSION,
    COMPUTE_NAME,
    VM_SIZE,
    JOB_NAME,
    ENDPOINT_NAME,
    DEPLOYMENT_NAME,
    FILE_ID,
]
PATHS = ["..", "../x", "../../escape-outside", "a/b", "/abs", "/etc/passwd", ".x", "", "a b"]
# `$` of a `re.match` pattern matches before a final newline: the old job and endpoint
# rules took "job-1\n" and "abc\n"; a NUL ends a C path early
SNEAKY = ["x\n", "job-1\n", "abc\n", "abc\x00", "a\x00/../../x", "x" * 300]


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.what)
@pytest.mark.parametrize("bad", PATHS + SNEAKY)
def test_no_rule_admits_a_path(rule, bad: str) -> None:
    with pytest.raises(InvalidParameter, match=f"{rule.what} .* is not valid") as err:
        rule.check(bad)
    assert repr(rule.pattern) in err.value.message  # the field, the value and the pattern
    assert err.value.fix == f"use {rule.rule}."


def test_a_long_name_is_quoted_short() -> None:
    with pytest.raises(InvalidParameter) as err:
        JOB_NAME.check("j" * 5000)
    assert f"{'j' * 64!r}... (5000 characters)" in err.value.message
    assert len(err.value.message) < 200


def test_good_names_pass_and_the_error_class_can_be_chosen() -> None:
    assert MODEL_NAME.check("Phi-3-mini-4k-instruct") == "Phi-3-mini-4k-instruct"
    assert MODEL_VERSION.check("12") == "12"
    assert COMPUTE_NAME.check("gpu-cluster") == "gpu-cluster"
    assert JOB_NAME.check("job_20261206_101500_ab12") and JOB_NAME.check("a.b-c_d")
    assert FILE_ID.check("file-abc123") == "file-abc123"
    with pytest.raises(InvalidParameter):
        COMPUTE_NAME.check("gpu-")  # no trailing hyphen (Azure's rule)
    with pytest.raises(EndpointError):
        MODEL_NAME.check("../x", error=EndpointError)
    assert MODEL_NAME.check("a" * 255) and MODEL_VERSION.check("1" * 64)
    with pytest.raises(InvalidParameter):
        MODEL_VERSION.check("1" * 65)
    assert JOB_NAME.check("j" * 100)
    with pytest.raises(InvalidParameter):
        JOB_NAME.check("j" * 101)
    for bad in ("file-", "file_abc", "abc123", "file-a.b"):
        with pytest.raises(InvalidParameter, match="file id"):
            FILE_ID.check(bad)


@pytest.mark.parametrize("name", ["abc", "my-endpoint-1", "A" * 32, "x9z", "Ab-9"])
def test_endpoint_and_deployment_names_azure_takes(name: str) -> None:
    assert ENDPOINT_NAME.check(name) == DEPLOYMENT_NAME.check(name) == name


@pytest.mark.parametrize(
    "name", ["ab", "A" * 33, "1abc", "-abc", "abc-", "ab_c", "ab.c", "ab c", "ÿabc"]
)
def test_endpoint_and_deployment_names_azure_refuses(name: str) -> None:
    for rule in (ENDPOINT_NAME, DEPLOYMENT_NAME):
        with pytest.raises(EndpointError, match=f"{rule.what} .* is not valid") as exc:
            rule.check(name, EndpointError)
        assert "3-32 characters" in exc.value.fix and "starting with a letter" in exc.value.fix
