"""The local machine: CPU cores, RAM, GPUs, bf16 support, and its Azure-style `VmSize`.

Every chattune compute runs on this machine; a compute recorded with an Azure size name
(`Standard_NC6s_v3`) keeps that name, but its cores, memory and GPUs are read here.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import psutil

GIB = 2**30
MIB = 2**20
_UNLIMITED = 2**60  # cgroup v1 writes ~2^63 for "no limit"


@dataclass(frozen=True)
class GpuInfo:
    """One CUDA device as torch sees it."""

    index: int
    name: str
    total_memory_bytes: int
    compute_capability: str  # "9.0" for an H100
    bf16: bool  # compute capability >= 8.0 (Ampere and newer)


@dataclass(frozen=True)
class VmSize:
    """The fields of `azure.ai.ml.entities.VmSize` that users read (`compute.list_sizes()`).

    Units as in Azure: `memory_gb` in GiB, disk sizes in MiB, `v_cp_us` logical CPUs.
    """

    name: str
    family: str
    v_cp_us: int
    gpus: int
    memory_gb: float
    os_vhd_size_mb: int
    max_resource_volume_mb: int
    low_priority_capable: bool = False
    premium_io: bool = False
    supported_compute_types: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Machine:
    """What this machine offers to a training or serving process.

    `ram_available_bytes` is a snapshot: what a new process could take now without swapping
    (psutil's `available`, capped by a cgroup memory limit).
    """

    hostname: str
    cpu_model: str
    physical_cores: int
    logical_cores: int
    ram_total_bytes: int
    ram_available_bytes: int
    gpus: tuple[GpuInfo, ...]
    cpu_bf16: bool  # AVX512-BF16 or AMX-BF16: bf16 matmuls run in hardware
    cpu_flags: tuple[str, ...]  # the SIMD flags that matter to torch (avx2, avx512*, amx*)
    disk_total_bytes: int  # the file system holding the working directory

    def vm_size(
        self,
        name: str = "local",
        *,
        family: str | None = None,
        supported_compute_types: list[str] | None = None,
    ) -> VmSize:
        """This machine as an Azure `VmSize` named `name` (its numbers are this machine's).

        Example:
            >>> local_machine().vm_size().gpus == len(local_machine().gpus)
            True
        """
        return VmSize(
            name=name,
            family=family or vm_family(name),
            v_cp_us=self.logical_cores,
            gpus=len(self.gpus),
            memory_gb=round(self.ram_total_bytes / GIB, 1),
            os_vhd_size_mb=_disk_total("/") // MIB,
            max_resource_volume_mb=self.disk_total_bytes // MIB,
            # a machine you own is never evicted; premium IO is an Azure disk tier
            low_priority_capable=False,
            premium_io=False,
            supported_compute_types=supported_compute_types
            or (["local"] if name == "local" else ["AmlCompute"]),
        )

    def device_memory_bytes(self, gpus: int) -> int:
        """Memory one training process may use: free RAM on CPU (`gpus == 0`), else the
        smallest total memory among the first `gpus` GPUs (0 if there are fewer)."""
        if gpus <= 0:
            return self.ram_available_bytes
        if gpus > len(self.gpus):
            return 0
        return min(g.total_memory_bytes for g in self.gpus[:gpus])

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["gpus"] = [asdict(g) for g in self.gpus]
        data["cpu_flags"] = list(self.cpu_flags)
        return data


def vm_family(size: str) -> str:
    """Azure's family name for a size: `Standard_NC6s_v3` -> `standardNCSv3Family`.

    `local` is its own family; a name outside Azure's pattern is `custom`.
    """
    if size == "local":
        return "local"
    m = re.fullmatch(
        r"(?i)(standard|basic)_([a-z]+)(\d+)(-\d+)?([a-z]*)((?:_(?!v\d+$)[a-z]+\d+)*)(?:_(v\d+))?",
        size,
    )
    if not m:
        return "custom"
    tier, series, _, _, suffix, accel, version = m.groups()
    accel = accel.replace("_", "").upper()
    return f"{tier.lower()}{series.upper()}{suffix.upper()}{accel}{version or ''}Family"


def cpu_bf16_supported() -> bool:
    """True if this CPU runs bf16 matmuls in hardware (AVX512-BF16 or AMX-BF16).

    Without them torch emulates bf16, measured here at 0.3 GFLOP/s against 157 in fp32.
    """
    return bool({"avx512_bf16", "amx_bf16"} & set(_cpu_flags()))


def local_machine() -> Machine:
    """Read this machine's CPUs, memory and GPUs (GPUs through torch.cuda, cached)."""
    flags = _cpu_flags()
    cwd = Path.cwd()
    return Machine(
        hostname=platform.node(),
        cpu_model=_cpu_model(),
        physical_cores=psutil.cpu_count(logical=False) or _logical_cores(),
        logical_cores=_logical_cores(),
        ram_total_bytes=min(psutil.virtual_memory().total, _cgroup_memory_limit()),
        ram_available_bytes=_available_memory(),
        gpus=_gpus(),
        cpu_bf16=bool({"avx512_bf16", "amx_bf16"} & set(flags)),
        cpu_flags=tuple(f for f in flags if f.startswith(("avx", "amx", "fma"))),
        disk_total_bytes=_disk_total(str(cwd)),
    )


@cache
def _gpus() -> tuple[GpuInfo, ...]:
    import torch  # imported here: reading CPUs and RAM should not cost a torch import

    if not torch.cuda.is_available():
        return ()
    found = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        found.append(
            GpuInfo(
                index=i,
                name=props.name,
                total_memory_bytes=int(props.total_memory),
                compute_capability=f"{props.major}.{props.minor}",
                bf16=props.major >= 8,
            )
        )
    return tuple(found)


def _logical_cores() -> int:
    """CPUs this process may run on, capped by a cgroup CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    return max(1, min(cores, quota)) if quota else max(1, cores)


def _cgroup_cpu_quota() -> int | None:
    try:  # cgroup v2: "max 100000" or "200000 100000"
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        return None if quota == "max" else max(1, int(quota) // int(period))
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return None if quota <= 0 else max(1, quota // period)
    except (OSError, ValueError):
        return None


def _cgroup_memory_limit() -> int:
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text != "max" and text.isdigit() and int(text) < _UNLIMITED:
            return int(text)
    return _UNLIMITED


def _available_memory() -> int:
    available = psutil.virtual_memory().available
    limit = _cgroup_memory_limit()
    if limit < _UNLIMITED:
        # under a cgroup limit, what is left is the limit minus what the group uses now
        for path in (
            "/sys/fs/cgroup/memory.current",
            "/sys/fs/cgroup/memory/memory.usage_in_bytes",
        ):
            try:
                return max(0, min(available, limit - int(Path(path).read_text())))
            except (OSError, ValueError):
                continue
    return available


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def _cpu_flags() -> list[str]:
    m = re.search(r"^flags\s*:\s*(.*)$", _cpuinfo(), re.MULTILINE)
    return m.group(1).split() if m else []


def _cpu_model() -> str:
    m = re.search(r"^model name\s*:\s*(.*)$", _cpuinfo(), re.MULTILINE)
    return m.group(1).strip() if m else (platform.processor() or platform.machine())


def _disk_total(path: str) -> int:
    try:
        return shutil.disk_usage(path).total
    except OSError:
        return 0
