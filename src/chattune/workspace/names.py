"""The rules for names that become folders of the workspace (models, versions, computes,
jobs, endpoints, deployments), each written once with the message that states it.

Every rule starts with a letter or digit and allows only letters, digits and a few of
`._-`, so no name can hold a `/`, start with `.` or be `..`: a name can never lead a
path outside the folder it is joined to. The lengths and character sets follow Azure's
rules for the same resources.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from chattune.errors import ChattuneError, InvalidParameter


@dataclass(frozen=True)
class NameRule:
    """One kind of name: what it names, its pattern, and the rule in words."""

    what: str
    pattern: str
    rule: str

    def check(self, name: str, error: type[ChattuneError] = InvalidParameter) -> str:
        """Return `name` if it follows the rule.

        Raises:
            `error` (InvalidParameter by default): naming the value and the rule.
        """
        if not isinstance(name, str) or not re.fullmatch(self.pattern, name):
            raise error(f"{self.what} {name!r} is not valid.", fix=f"use {self.rule}.")
        return name


MODEL_NAME = NameRule(
    "model name",
    r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}",
    "letters, digits, '.', '_' or '-', starting with a letter or digit (at most 255 characters)",
)
MODEL_VERSION = NameRule(
    "version",
    r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}",
    "letters, digits, '.', '_' or '-', starting with a letter or digit (at most 64 characters)",
)
COMPUTE_NAME = NameRule(
    "compute name",
    r"[a-zA-Z][a-zA-Z0-9-]{0,30}[a-zA-Z0-9]",
    "2-32 letters, digits or hyphens, starting with a letter and not ending with a hyphen",
)
VM_SIZE = NameRule(
    "VM size",
    r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}",
    "a size name such as Standard_NC6s_v3 or local (letters, digits, _ . -)",
)
