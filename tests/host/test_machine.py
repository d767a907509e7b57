from __future__ import annotations

from pathlib import Path

import torch

from chattune.host.machine import local_machine, vm_family


def test_local_machine_has_sane_values() -> None:
    m = local_machine()
    assert m.logical_cores >= 1
    assert m.physical_cores >= 1  # may exceed logical_cores under a CPU affinity or quota
    assert m.ram_total_bytes > 0
    assert 0 < m.ram_available_bytes <= m.ram_total_bytes
    assert len(m.gpus) == torch.cuda.device_count()
    for g in m.gpus:
        assert g.total_memory_bytes > 0 and g.name


def test_cpu_bf16_follows_cpuinfo_flags() -> None:
    m = local_machine()
    flags = Path("/proc/cpuinfo").read_text()
    assert m.cpu_bf16 == ("avx512_bf16" in flags or "amx_bf16" in flags)


def test_vm_size_carries_this_machines_numbers() -> None:
    m = local_machine()
    vm = m.vm_size()
    assert vm.name == "local" and vm.family == "local"
    assert vm.gpus == torch.cuda.device_count()
    assert vm.v_cp_us == m.logical_cores
    assert abs(vm.memory_gb - m.ram_total_bytes / 2**30) < 0.1
    assert vm.os_vhd_size_mb > 0 and vm.max_resource_volume_mb > 0
    assert vm.supported_compute_types == ["local"]
    azure = m.vm_size("Standard_NC6s_v3")
    assert azure.name == "Standard_NC6s_v3" and azure.gpus == vm.gpus
    assert set(azure.as_dict()) >= {
        "name",
        "family",
        "v_cp_us",
        "gpus",
        "memory_gb",
        "os_vhd_size_mb",
        "max_resource_volume_mb",
        "low_priority_capable",
        "premium_io",
        "supported_compute_types",
    }


def test_vm_family_names_like_azure() -> None:
    assert vm_family("Standard_NC6s_v3") == "standardNCSv3Family"
    assert vm_family("Standard_NC24ads_A100_v4") == "standardNCADSA100v4Family"
    assert vm_family("Standard_DS3_v2") == "standardDSv2Family"
    assert vm_family("local") == "local"
    assert vm_family("my-box") == "custom"


def test_device_memory_is_ram_on_cpu_and_zero_for_missing_gpus() -> None:
    m = local_machine()
    assert m.device_memory_bytes(0) == m.ram_available_bytes
    assert m.device_memory_bytes(len(m.gpus) + 1) == 0
