"""`loader.serving_dtype`: what a model server loads its weights in."""

from __future__ import annotations

import pytest
import torch

from chattune.errors import InvalidParameter
from chattune.host import machine
from chattune.serving.loader import SERVING_DTYPES, serving_dtype

CPU = torch.device("cpu")


@pytest.mark.parametrize(("hw_bf16", "want"), [(True, torch.bfloat16), (False, torch.float32)])
def test_auto_on_cpu_is_bf16_only_with_bf16_instructions(monkeypatch, hw_bf16, want):
    monkeypatch.setattr(machine, "cpu_bf16_supported", lambda: hw_bf16)
    assert serving_dtype(CPU) is want
    assert serving_dtype(CPU, "auto") is want


@pytest.mark.parametrize("name", [n for n in SERVING_DTYPES if n != "auto"])
def test_a_named_dtype_is_taken_as_it_is(monkeypatch, name):
    monkeypatch.setattr(machine, "cpu_bf16_supported", lambda: False)
    assert serving_dtype(CPU, name) is getattr(torch, name)


def test_an_unknown_dtype_names_the_choices_and_the_fix():
    with pytest.raises(InvalidParameter) as e:
        serving_dtype(CPU, "fp8")
    text = str(e.value) + str(getattr(e.value, "fix", ""))
    assert "'fp8'" in text and "float32" in text and "auto" in text
