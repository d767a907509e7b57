from __future__ import annotations

import pytest

from chattune.compute.store import (
    AZURE_GPU_SIZES,
    create_compute,
    delete_compute,
    get_compute,
    list_computes,
    list_sizes,
)
from chattune.errors import ComputeNotFound, InvalidParameter


def test_local_is_always_there(workspace) -> None:
    assert [c.name for c in list_computes(workspace)] == ["local"]
    local = get_compute(workspace, "local")
    assert local.is_local and local.size == "local"
    assert [s.name for s in list_sizes(workspace)] == ["local", *AZURE_GPU_SIZES]


def test_create_get_list(workspace) -> None:
    c = create_compute(workspace, "gpu-cluster", "Standard_NC6s_v3", max_instances=1)
    assert c.size == "Standard_NC6s_v3" and c.spec == {"max_instances": 1}
    again = get_compute(workspace, "gpu-cluster")
    assert (again.size, again.spec) == ("Standard_NC6s_v3", {"max_instances": 1})
    create_compute(workspace, "cpu-box", "Standard_E4s_v3")
    assert [c.name for c in list_computes(workspace)] == ["local", "cpu-box", "gpu-cluster"]
    sizes = list_sizes(workspace)
    # local, then the workspace's sizes, then Azure's allow-listed GPU sizes, each once
    assert [s.name for s in sizes] == [
        "local",
        "Standard_E4s_v3",
        "Standard_NC6s_v3",
        *[x for x in AZURE_GPU_SIZES if x != "Standard_NC6s_v3"],
    ]
    # every size has the local machine's numbers: local hardware runs every compute
    assert len({(s.gpus, s.v_cp_us, s.memory_gb) for s in sizes}) == 1
    assert sizes[2].family == "standardNCSv3Family"


def test_unknown_name_lists_the_available_computes(workspace) -> None:
    create_compute(workspace, "gpu-cluster", "Standard_NC6s_v3")
    with pytest.raises(ComputeNotFound) as err:
        get_compute(workspace, "gpu-clustr")
    assert "'gpu-clustr'" in err.value.message
    assert "available computes: local, gpu-cluster" in err.value.message
    assert "chattune compute create gpu-clustr" in (err.value.fix or "")


def test_create_rejects_bad_names_local_and_duplicates(workspace) -> None:
    with pytest.raises(InvalidParameter, match="built in"):
        create_compute(workspace, "local", "Standard_NC6s_v3")
    with pytest.raises(InvalidParameter, match="not valid"):
        create_compute(workspace, "9lives", "Standard_NC6s_v3")
    with pytest.raises(InvalidParameter, match="VM size"):
        create_compute(workspace, "ok-name", "two words")
    create_compute(workspace, "box", "Standard_E4s_v3")
    with pytest.raises(InvalidParameter, match="already exists"):
        create_compute(workspace, "box", "Standard_E8s_v3")
    assert create_compute(workspace, "box", "Standard_E8s_v3", replace=True).size == (
        "Standard_E8s_v3"
    )
    assert get_compute(workspace, "box").size == "Standard_E8s_v3"


def test_delete(workspace) -> None:
    create_compute(workspace, "box", "Standard_E4s_v3")
    delete_compute(workspace, "box")
    assert [c.name for c in list_computes(workspace)] == ["local"]
    with pytest.raises(ComputeNotFound):
        delete_compute(workspace, "box")
    with pytest.raises(InvalidParameter):
        delete_compute(workspace, "local")
