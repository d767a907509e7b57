"""The rules for names that become folders or files of the workspace (models, versions,
computes, jobs, endpoints, deployments, files of the OpenAI files API), each written once
with the message that states it. Every such name is checked here, and nowhere else.

Every rule starts with a letter or digit and allows only letters, digits and a few of
`._-`, so no name can hold a `/` or a NUL, start with `.` or be `..`: a name can never lead
a path outside the folder it is joined to. (`Workspace.inside` checks the joined path
too, for what a name cannot rule out: a symbolic link inside the workspace.) The lengths
and character sets follow Azure's rules for the same resources.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from chattune.errors import ChattuneError, InvalidParameter

_SHOWN = 64  # characters of a refused name quoted in the message; the rest is counted


@dataclass(frozen=True)
class NameRule:
    """One kind of name: what it names, its pattern (matched whole), and the rule in words."""

    what: str
    pattern: str
    rule: str

    def check(self, name: str, error: type[ChattuneError] = InvalidParameter) -> str:
        """Return `name` if it follows the rule.

        Raises:
            `error` (InvalidParameter by default): naming what is named, the value (cut
                short when long) and the pattern, with the rule in words as the fix.
        """
        if not isinstance(name, str) or not re.fullmatch(self.pattern, name):
            raise error(
                f"{self.what} {_shown(name)} is not valid (the pattern is {self.pattern!r}).",
                fix=f"use {self.rule}.",
            )
        return name


def _shown(name: object) -> str:
    if isinstance(name, str) and len(name) > _SHOWN:
        return f"{name[:_SHOWN]!r}... ({len(name)} characters)"
    return repr(name)


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
JOB_NAME = NameRule(
    "job name",
    r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}",
    "letters, digits, '_', '.' or '-', starting with a letter or digit (at most 100 characters)",
)
# Azure's rule for online endpoints and their deployments.
ENDPOINT_NAME = NameRule(
    "endpoint name",
    r"[a-zA-Z][a-zA-Z0-9-]{1,30}[a-zA-Z0-9]",
    "3-32 characters: letters, digits and '-', starting with a letter and ending with a "
    "letter or digit (Azure's rule)",
)
DEPLOYMENT_NAME = NameRule("deployment name", ENDPOINT_NAME.pattern, ENDPOINT_NAME.rule)
# The ids chattune gives uploaded files (OpenAI's form, `file-abc123`); a file's own name is
# metadata and never part of a path.
FILE_ID = NameRule(
    "file id",
    r"file-[A-Za-z0-9]{1,64}",
    "'file-' followed by 1-64 letters or digits, as the files API returned it",
)
