"""The workspace's computes: `local` (always there) and named computes recorded by users.

A named compute records a VM size name, possibly an Azure one (`AmlCompute(name="gpu",
size="Standard_NC6s_v3")` from the SDK lands here), and any other fields the caller gave
(`min_instances`, `tier`, ...) as JSON. Whatever the size says, the local machine runs the
work: `list_sizes()` answers with that size's name and this machine's CPUs, memory and GPUs.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from chattune.errors import ComputeNotFound, InvalidParameter
from chattune.host.machine import Machine, VmSize, local_machine
from chattune.workspace import Workspace
from chattune.workspace.names import COMPUTE_NAME, VM_SIZE

LOCAL = "local"
# The GPU sizes Azure allow-lists for chat-completion fine-tuning and inference (the tags of
# its Phi-3 models). Any of them is a name for this machine here, so a seed that asks for
# Standard_NC6s_v3 runs on it when the model fits; `list_sizes` reports them too.
AZURE_GPU_SIZES = (
    "Standard_NC6s_v3",
    "Standard_NC12s_v3",
    "Standard_NC24s_v3",
    "Standard_NC24rs_v3",
    "Standard_ND40rs_v2",
    "Standard_NC24ads_A100_v4",
    "Standard_NC48ads_A100_v4",
    "Standard_NC96ads_A100_v4",
    "Standard_ND96asr_v4",
    "Standard_ND96amsr_A100_v4",
)


@dataclass(frozen=True)
class Compute:
    """A compute of the workspace. `local` is built in; the others are records.

    Attributes:
        name: the compute's name (`local`, `gpu-cluster`, ...).
        size: the VM size it was created with (`local`, `Standard_NC6s_v3`, ...).
        created_at: unix seconds; None for the built-in `local`.
        spec: the other fields given at creation (JSON values).
    """

    name: str
    size: str
    created_at: float | None = None
    spec: dict[str, Any] = field(default_factory=dict)

    @property
    def is_local(self) -> bool:
        return self.name == LOCAL

    def vm_size(self, machine: Machine | None = None) -> VmSize:
        """The compute's size with the numbers of the machine that runs it (this one)."""
        return (machine or local_machine()).vm_size(self.size)

    def as_dict(self, machine: Machine | None = None) -> dict[str, Any]:
        return {
            "name": self.name,
            "size": self.size,
            "created_at": self.created_at,
            "spec": self.spec,
            "vm_size": self.vm_size(machine).as_dict(),
        }


def _local() -> Compute:
    return Compute(name=LOCAL, size=LOCAL)


def list_computes(ws: Workspace) -> list[Compute]:
    """`local` first, then the recorded computes by name."""
    rows = ws.db().execute("SELECT name, size, created_at, spec FROM computes ORDER BY name")
    return [_local()] + [
        Compute(r["name"], r["size"], r["created_at"], json.loads(r["spec"])) for r in rows
    ]


def get_compute(ws: Workspace, name: str) -> Compute:
    """The compute called `name`.

    Raises:
        ComputeNotFound: no such compute; the message lists the workspace's computes.
    """
    if name == LOCAL:
        return _local()
    row = (
        ws.db()
        .execute("SELECT name, size, created_at, spec FROM computes WHERE name = ?", (name,))
        .fetchone()
    )
    if row is None:
        names = ", ".join(c.name for c in list_computes(ws))
        raise ComputeNotFound(
            f"no compute named {name!r} in workspace {ws.root}; available computes: {names}.",
            fix=f"use one of them (--compute {LOCAL} is always there), or record it with "
            f"`chattune compute create {name} --size SIZE`.",
        )
    return Compute(row["name"], row["size"], row["created_at"], json.loads(row["spec"]))


def create_compute(
    ws: Workspace, name: str, size: str, *, replace: bool = False, **spec: Any
) -> Compute:
    """Record a named compute of VM size `size`; the local machine runs its work.

    Args:
        name: 2-32 letters, digits or hyphens, starting with a letter; not `local`.
        size: a VM size name such as `Standard_NC6s_v3`, or `local`.
        replace: overwrite a compute of the same name (create-or-update, as the SDK's
            `compute.begin_create_or_update` does) instead of failing.
        **spec: other fields to keep with it (JSON values), e.g. `min_instances=0`.

    Raises:
        InvalidParameter: a bad name or size, `local`, a taken name without `replace`,
            or a spec value that is not JSON.

    Example:
        >>> create_compute(ws, "gpu-cluster", "Standard_NC6s_v3", max_instances=1).size
        'Standard_NC6s_v3'
    """
    if name == LOCAL:
        raise InvalidParameter(
            "the compute 'local' is built in (it is this machine) and cannot be created.",
            fix="choose another name for the compute.",
        )
    COMPUTE_NAME.check(name)
    VM_SIZE.check(size)
    try:
        spec_json = json.dumps(spec, sort_keys=True)
    except TypeError as exc:
        raise InvalidParameter(
            f"compute {name!r}: spec values must be JSON ({exc}).",
            fix="pass strings, numbers, booleans, lists or dicts.",
        ) from exc
    created_at = time.time()
    with ws.write() as conn:
        exists = conn.execute("SELECT 1 FROM computes WHERE name = ?", (name,)).fetchone()
        if exists and not replace:
            raise InvalidParameter(
                f"a compute named {name!r} already exists.",
                fix="choose another name, delete it first, or pass replace=True (--replace).",
            )
        conn.execute(
            "INSERT OR REPLACE INTO computes(name, size, created_at, spec) VALUES (?, ?, ?, ?)",
            (name, size, created_at, spec_json),
        )
    return Compute(name, size, created_at, json.loads(spec_json))


def delete_compute(ws: Workspace, name: str) -> None:
    """Forget the compute `name`.

    Raises:
        InvalidParameter: `name` is `local`.
        ComputeNotFound: no such compute.
    """
    if name == LOCAL:
        raise InvalidParameter(
            "the compute 'local' is built in and cannot be deleted.",
            fix="delete a named compute instead (see `chattune compute show`).",
        )
    get_compute(ws, name)
    with ws.write() as conn:
        conn.execute("DELETE FROM computes WHERE name = ?", (name,))


def list_sizes(ws: Workspace, machine: Machine | None = None) -> list[VmSize]:
    """`VmSize`s for `local`, each distinct size of the workspace's computes, and Azure's
    allow-listed GPU sizes (`AZURE_GPU_SIZES`).

    Every entry carries this machine's numbers (`gpus`, `v_cp_us`, `memory_gb`, ...), since
    this machine runs the work whatever size a compute was recorded with.
    """
    machine = machine or local_machine()
    return [machine.vm_size(s) for s in known_sizes(ws)]


def known_sizes(ws: Workspace) -> list[str]:
    """`local`, the sizes of the workspace's computes, then `AZURE_GPU_SIZES`, each once."""
    recorded = sorted({c.size for c in list_computes(ws)} - {LOCAL})
    return list(dict.fromkeys([LOCAL, *recorded, *AZURE_GPU_SIZES]))
