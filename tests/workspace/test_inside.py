"""`Workspace.inside`: the one check that a path chattune writes or deletes stays inside."""

from __future__ import annotations

from pathlib import Path

import pytest

from chattune.errors import PathOutsideWorkspace, WorkspaceError
from chattune.workspace import Workspace


def test_paths_inside_pass_resolved(workspace: Workspace) -> None:
    ws = workspace
    assert ws.inside(ws.models_dir / "m" / "1") == ws.models_dir / "m" / "1"
    assert ws.inside(ws.models_dir / "a" / ".." / "b", under=ws.models_dir) == ws.models_dir / "b"
    (ws.models_dir / "m").mkdir()
    (ws.models_dir / "alias").symlink_to(ws.models_dir / "m")  # a link that stays inside
    assert ws.inside(ws.models_dir / "alias" / "1") == ws.models_dir / "m" / "1"


@pytest.mark.parametrize(
    "rel", ["../escape", "models/../../escape", "models/m/../../../escape", ".", "models/.."]
)
def test_dotdot_and_the_root_itself_are_refused(workspace: Workspace, rel: str) -> None:
    with pytest.raises(PathOutsideWorkspace) as err:
        workspace.inside(workspace.root / rel)
    assert f"its workspace {workspace.root}" in err.value.message
    assert "plain folder name" in (err.value.fix or "")
    assert isinstance(err.value, WorkspaceError)


def test_under_narrows_and_absolute_paths_are_refused(workspace: Workspace) -> None:
    ws = workspace
    with pytest.raises(PathOutsideWorkspace, match=r"is not inside .*models"):
        ws.inside(ws.jobs_dir / "j", under=ws.models_dir)
    for outside in ("/etc/passwd", "/tmp", str(ws.root.parent / "x")):
        with pytest.raises(PathOutsideWorkspace):
            ws.inside(outside)
    with pytest.raises(PathOutsideWorkspace, match="NUL"):
        ws.inside(str(ws.models_dir / "a\x00b"))


def test_a_link_leading_out_is_refused_and_named(workspace: Workspace, tmp_path: Path) -> None:
    ws = workspace
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (ws.models_dir / "evil").symlink_to(outside)
    with pytest.raises(PathOutsideWorkspace) as err:
        ws.inside(ws.models_dir / "evil" / "1", under=ws.models_dir)
    assert f"resolves to {outside / '1'}" in err.value.message
    assert err.value.fix == (
        f"{ws.models_dir / 'evil'} is a symbolic link to {outside}: remove it, or use another name."
    )


def test_a_layout_folder_may_live_on_another_disk(workspace: Workspace, tmp_path: Path) -> None:
    """The owner may link `endpoints/` elsewhere; only names below it are held in."""
    disk = tmp_path / "big-disk"
    disk.mkdir()
    (workspace.root / "endpoints").symlink_to(disk)
    under = workspace.root / "endpoints"
    assert workspace.inside(under / "ep", under=under) == disk / "ep"
    with pytest.raises(PathOutsideWorkspace):
        workspace.inside(under / ".." / "x", under=under)
