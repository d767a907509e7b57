"""Nothing chattune writes under a name lands outside the workspace (issue 17, item 1).

Each test snapshots the parent of CHATTUNE_HOME (every path, size and mtime but the
workspace's own) before and after the commands, so a file written, changed or removed
outside is caught, whatever its name.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from chattune.cli.main import main
from chattune.errors import PathOutsideWorkspace
from chattune.jobs.spec import build_spec
from chattune.jobs.store import create_job, list_jobs
from chattune.models.card import builtin_cards
from chattune.models.store import add_version, list_models
from chattune.serving import deployments as D
from chattune.serving import endpoints as E
from chattune.serving.control import lifecycle
from chattune.workspace import Workspace

BAD_NAMES = [
    "../../escape-outside",
    "../x",
    "..",
    ".hidden",
    "a/b",
    "/tmp/escape-abs",
    "nul\x00byte",
    "x" * 300,
]

Snapshot = dict[str, tuple[bool, int, int]]


def snapshot(parent: Path, skip: Path) -> Snapshot:
    """Every path under `parent` but `skip`: (is a folder, size of a file, mtime_ns)."""
    seen: Snapshot = {}
    for dirpath, dirs, files in os.walk(parent):
        dirs[:] = [d for d in dirs if Path(dirpath, d) != skip]
        for name in dirs + files:
            st = Path(dirpath, name).lstat()
            is_dir = name in dirs
            seen[os.path.join(dirpath, name)] = (
                is_dir,
                0 if is_dir else st.st_size,
                st.st_mtime_ns,
            )
    st = parent.lstat()
    seen[str(parent)] = (True, 0, st.st_mtime_ns)
    return seen


def bytes_written_outside(before: Snapshot, after: Snapshot) -> dict[str, tuple]:
    """The paths created, changed or removed between the two snapshots."""
    return {
        p: (before.get(p), after.get(p))
        for p in before.keys() | after.keys()
        if before.get(p) != after.get(p)
    }


def run(capsys: pytest.CaptureFixture[str], ws: Workspace, *args: str) -> tuple[int, str, str]:
    code = main([*args, "--workspace", str(ws.root)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def outside(workspace: Workspace, tmp_path: Path) -> Path:
    """A folder beside the workspace, where links planted in it lead."""
    assert workspace.root.parent == tmp_path  # the parent the snapshots walk
    folder = tmp_path / "escape-outside"
    folder.mkdir()
    return folder


def test_model_import_and_register_write_nothing_outside(
    workspace: Workspace, outside: Path, tiny_llama_dir: Path, capsys
) -> None:
    ws = workspace
    (ws.models_dir / "evil").symlink_to(outside)  # a link no name rule can see
    before = snapshot(ws.root.parent, ws.root)
    for name in [*BAD_NAMES, "evil"]:
        code, _, err = run(capsys, ws, "model", "import", str(tiny_llama_dir), "--name", name)
        assert code != 0, name
        assert "is not valid" in err or "symbolic link" in err, err
    code, _, err = run(
        capsys, ws, "model", "register", "--name", "evil", "--path", str(tiny_llama_dir),
        "--type", "custom_model",
    )  # fmt: skip
    assert code != 0 and f"{ws.models_dir / 'evil'} is a symbolic link" in err, err
    assert bytes_written_outside(before, snapshot(ws.root.parent, ws.root)) == {}
    assert not [v for v in list_models(ws) if v.kind != "catalog"]


def test_a_model_name_of_the_longest_allowed_length_imports(
    workspace: Workspace, tiny_llama_dir: Path, capsys
) -> None:
    """255 characters (Azure's limit) is a folder name most file systems take; the import's
    lock file, named after it, must fit too."""
    name = "m" * 255
    code, _, err = run(capsys, workspace, "model", "import", str(tiny_llama_dir), "--name", name)
    assert code == 0, err
    assert (workspace.models_dir / name / "1" / "config.json").is_file()


def test_job_names_write_nothing_outside(
    workspace: Workspace, outside: Path, tmp_path: Path, capsys
) -> None:
    ws = workspace
    train = tmp_path / "train.jsonl"  # never read: the name is refused first
    before = snapshot(ws.root.parent, ws.root)
    for name in [*BAD_NAMES, "job-1\n"]:
        code, _, err = run(
            capsys, ws, "job", "create", "--model", "SmolLM2-135M-Instruct",
            "--train-file", str(train), "--name", name,
        )  # fmt: skip
        assert code != 0 and "job name" in err and "is not valid" in err, (name, err)
    (ws.jobs_dir / "evil").symlink_to(outside)
    spec = build_spec({"name": "evil", "model": "SmolLM2-135M-Instruct", "train_file": train})
    with pytest.raises(PathOutsideWorkspace, match="symbolic link"):
        create_job(ws, spec)
    (ws.jobs_dir / "evil").unlink()
    assert bytes_written_outside(before, snapshot(ws.root.parent, ws.root)) == {}
    assert list_jobs(ws) == []  # no row either


def test_endpoint_and_deployment_names_write_nothing_outside(
    workspace: Workspace, outside: Path, capsys
) -> None:
    ws = workspace
    folder = ws.models_dir / "m" / "1"
    folder.mkdir(parents=True)
    card = builtin_cards()["SmolLM2-135M-Instruct"]
    add_version(ws, name="m", version="1", kind="registered", card=card, path=folder, source="t")
    E.create_endpoint(ws, "good-ep", port=1)  # a row only: no supervisor runs
    (ws.root / "endpoints").mkdir()
    (ws.root / "endpoints" / "evil-ep").symlink_to(outside)
    (ws.root / "endpoints" / "good-ep").mkdir()
    (ws.root / "endpoints" / "good-ep" / "evil-dep").symlink_to(outside)
    before = snapshot(ws.root.parent, ws.root)
    try:
        for name in [*BAD_NAMES, "abc\n"]:
            code, _, err = run(capsys, ws, "endpoint", "create", name)
            assert code != 0 and "endpoint name" in err, (name, err)
            assert "'[a-zA-Z][a-zA-Z0-9-]{1,30}[a-zA-Z0-9]'" in err  # not eaten as markup
            code, _, err = run(
                capsys, ws, "deployment", "create", "-e", "good-ep", "-n", name, "--model", "m:1"
            )
            assert code != 0 and "deployment name" in err, (name, err)
        code, _, err = run(capsys, ws, "endpoint", "create", "evil-ep")
        assert code != 0 and "symbolic link" in err, err
        code, _, err = run(
            capsys, ws, "deployment", "create", "-e", "good-ep", "-n", "evil-dep", "--model", "m:1"
        )
        assert code != 0 and "symbolic link" in err, err
    finally:  # a supervisor started by a refusal that came too late
        for ep in E.list_endpoints(ws):
            if ep.pid:
                lifecycle.stop_endpoint(ws, ep.name)
    assert bytes_written_outside(before, snapshot(ws.root.parent, ws.root)) == {}
    assert [e.name for e in E.list_endpoints(ws)] == ["good-ep"]
    assert D.list_deployments(ws, "good-ep") == []


def test_model_delete_never_deletes_outside(workspace: Workspace, outside: Path, capsys) -> None:
    """Rows recorded outside the workspace (by a chattune that did not check names, or
    through a link) are dropped; their files stay, and the command says so."""
    ws = workspace
    (outside / "1").mkdir()
    (outside / "1" / "weights.bin").write_bytes(b"not chattune's")
    (ws.models_dir / "link").symlink_to(outside)
    card = builtin_cards()["SmolLM2-135M-Instruct"]
    recorded = {
        "1": outside / "1",  # absolute
        "2": ws.models_dir / "../../escape-outside" / "1",  # as the unchecked import wrote it
        "3": ws.models_dir / "link" / "1",  # through a link
    }
    for version, path in recorded.items():
        add_version(
            ws, name="esc", version=version, kind="imported", card=card, path=path, source="t"
        )
    before = snapshot(ws.root.parent, ws.root)
    for version in recorded:
        code, out, err = run(capsys, ws, "model", "delete", "esc", "--version", version)
        assert code == 0 and f"deleted esc:{version}" in out and "escape-outside" not in out
        assert f"left the files of esc:{version}" in err and "Remove them yourself" in err
    add_version(
        ws, name="esc", version="4", kind="imported", card=card, path=outside / "1", source="t"
    )
    code, out, err = run(capsys, ws, "model", "delete", "esc", "--version", "4", "--json")
    assert code == 0 and '"files_removed": false' in out, out
    assert bytes_written_outside(before, snapshot(ws.root.parent, ws.root)) == {}
    assert (outside / "1" / "weights.bin").read_bytes() == b"not chattune's"
    assert list_models(ws, "esc") == []
