"""The README, run: every command it shows is executed, in the order it shows them.

`test_readme_command_parses` checks that every `chattune ...` line parses (subcommand,
flags, value types) without running anything. `test_every_readme_block_is_run` checks that
each bash line of the README is run by `test_readme_runs_in_order` or excused in `NOT_RUN`
with a reason, so a new command cannot slip in unrun.

`test_readme_runs_in_order` (integration) runs the README top to bottom in a temporary
folder, with `CHATTUNE_HOME` there and the venv's `bin` first on `PATH`: each `chattune`
line as a process, the `KEY=$(...)`/curl block with `bash`, each python block with the
venv's python. The files it names are written first: `my_data.jsonl`, `job.yaml` and
`sample_score.json` from the README's own blocks (the fenced block after a line naming
the file), `./my-hf-folder` as the tiny Llama of `tests/conftest.py`, and
`./model.Q8_0.gguf` as that tiny Llama written as a GGUF file (`tiny_gguf.py`): importing
it takes seconds, where SmolLM2's GGUF (imported by the line before) takes half a minute.

The text is run as written except for these substitutions (`SUBSTITUTIONS`; each must
match the README, so a stale entry fails the test):

- `job create --model SmolLM2-135M-Instruct` -> `job create --model mine`, and
  `model: SmolLM2-135M-Instruct` -> `model: mine` in job.yaml: train the tiny model that
  the README's own `chattune model import ./my-hf-folder --name mine` imported, not
  SmolLM2 (minutes);
- `max_steps=20` -> `max_steps=2` (`max_steps: 20` in job.yaml likewise): seconds;
- `max_seq_length=512` -> `max_seq_length=64` (job.yaml likewise): the tiny model;
- `chattune ui` -> `chattune ui --port <a free port>`: 5000 may be taken;
- `127.0.0.1:PORT` (curl, openai) -> the endpoint's port (`chattune endpoint show --json`);
- `api_key=KEY` (openai) -> the primary key (`KEY` is the bash block's variable);
- `stream=True` (openai) -> `stream=True, seed=0`: the tiny random model's sampled reply
  is reproducible (never an end-of-text token first).

Commands that block (`deployment logs --follow`, `chattune ui`) run until they show they
work (the instance's log; the MLflow UI serving this workspace's run), then are stopped.
`chattune endpoint delete chat-ep` runs again in a `finally` if the sequence stopped
before it, and every process naming the temporary folder is killed at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer

from chattune.cli.main import app

README = Path(__file__).resolve().parents[2] / "README.md"
BIN = Path(sys.executable).parent

# README bash lines that this test does not run, and why.
NOT_RUN = {
    "make demo": "runs this whole workflow on SmolLM2 (minutes); this test runs it on a tiny model",
    "make test": "runs every test, this one included",
    "make lint": "ruff; CI runs it",
    "cd examples && PATH=../.venv/bin:$PATH python seed_notebook.py": (
        "trains SmolLM2 for 3 epochs; tests/examples runs the notebook on a tiny model"
    ),
}
# The files the README's commands read, written from the README's blocks.
FILES = ("my_data.jsonl", "job.yaml", "sample_score.json")
SUBSTITUTIONS = (
    ("job create --model SmolLM2-135M-Instruct", "job create --model mine"),
    ("model: SmolLM2-135M-Instruct", "model: mine"),
    ("max_steps=20", "max_steps=2"),
    ("max_steps: 20", "max_steps: 2"),
    ("max_seq_length=512", "max_seq_length=64"),
    ("max_seq_length: 512", "max_seq_length: 64"),
    ("chattune ui", "chattune ui --port {ui_port}"),
    ("127.0.0.1:PORT", "127.0.0.1:{port}"),
    ("api_key=KEY", "api_key={key!r}"),
    ("stream=True", "stream=True, seed=0"),
)
# Expected exit code and text in the output, by the start of the README line; else exit 0.
EXPECT: dict[str, tuple[int, tuple[str, ...]]] = {
    "chattune model import Qwen/": (2, ("Hub", "chattune model import SmolLM2-135M-Instruct")),
    "chattune data download --dataset HuggingFaceH4/": (2, ("Hub", "--dataset chitchat")),
    "chattune model import SmolLM2-135M-Instruct": (0, ("SmolLM2-135M-Instruct",)),
    "chattune job create --model": (0, ("Status: Completed",)),
    "chattune job stream my-job": (0, ("Status: Completed",)),
    "chattune job cancel my-job": (0, ("already ended (Completed): nothing to cancel",)),
    "chattune job resume my-job": (2, ("already completed", "create a new job")),
    "chattune job create -f job.yaml": (
        0,
        (
            "Status: Completed",
            "preprocess    Completed (cached)",
            "finetune      Completed (cached)",
            "evaluate      Completed (cached)",
            "convert       Completed (cached)",
        ),
    ),
    "chattune deployment create": (0, ("deployment demo is ready",)),
    "chattune endpoint invoke": (0, ('"output"',)),
    "chattune up": (0, ("no endpoints in this workspace",)),
}
ENDPOINT = "chat-ep"


@dataclass
class Step:
    """One runnable piece of the README: a `chattune` line, a bash block or a python block."""

    kind: str  # "chattune", "bash" or "python"
    text: str


def _logical_lines(block: str) -> list[str]:
    joined = re.sub(r"\\\n\s*", " ", block)  # line continuations
    lines = (re.split(r"\s+#", line.strip(), maxsplit=1)[0].strip() for line in joined.split("\n"))
    return [line for line in lines if line and not line.startswith("#")]


def readme_blocks() -> tuple[list[Step], dict[str, str], list[str]]:
    """The README's runnable steps in order, the files its blocks define, and its bash lines
    that are excused (`NOT_RUN`)."""
    text = README.read_text()
    steps: list[Step] = []
    files: dict[str, str] = {}
    excused: list[str] = []
    end = 0
    for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, flags=re.S | re.M):
        before = text[end : m.start()].rstrip().rsplit("\n", 1)[-1]
        end = m.end()
        lang, body = m.group(1), m.group(2)
        named = re.match(r"`(?:\./)?([\w.-]+)`.*:$", before)
        if lang in ("json", "yaml") and named and named.group(1) in FILES:
            files[named.group(1)] = body
        elif lang == "python":
            steps.append(Step("python", body))
        elif lang == "bash":
            lines = _logical_lines(body)
            if all(line.startswith("chattune ") or line in NOT_RUN for line in lines):
                steps += [Step("chattune", line) for line in lines if line not in NOT_RUN]
                excused += [line for line in lines if line in NOT_RUN]
            else:  # a script: run as a whole
                steps.append(Step("bash", body))
    return steps, files, excused


STEPS, BLOCK_FILES, EXCUSED = readme_blocks()
COMMANDS = [s.text for s in STEPS if s.kind == "chattune"]


def test_the_readme_shows_every_step() -> None:
    shown = {shlex.split(c)[1] for c in COMMANDS}
    assert {"model", "compute", "data", "job", "endpoint", "deployment", "up", "ui"} <= shown
    assert len(COMMANDS) >= 35


def test_every_readme_block_is_run() -> None:
    assert sorted(BLOCK_FILES) == sorted(FILES), "a file the commands read has no README block"
    assert sorted(set(EXCUSED)) == sorted(NOT_RUN), "NOT_RUN names a line the README no longer has"
    kinds = [s.kind for s in STEPS]
    assert kinds.count("bash") == 1 and kinds.count("python") == 2  # curl; openai and SDK
    text = "\n".join(s.text for s in STEPS) + "\n".join(BLOCK_FILES.values())
    for old, _ in SUBSTITUTIONS:
        assert old in text, f"substitution {old!r} no longer matches the README"
    for prefix in EXPECT:
        assert any(c.startswith(prefix) for c in COMMANDS), f"EXPECT[{prefix!r}] matches nothing"


@pytest.mark.parametrize("line", COMMANDS)
def test_readme_command_parses(line: str) -> None:
    args = shlex.split(line)[1:]
    cmd = typer.main.get_command(app)
    info = "chattune"
    while args and hasattr(cmd, "commands") and args[0] in cmd.commands:
        info += f" {args[0]}"
        cmd = cmd.commands[args.pop(0)]
    assert not hasattr(cmd, "commands"), f"{line!r}: no such command"
    # parsing checks the subcommand, every flag, its value's type and the arguments
    cmd.make_context(info, list(args))


# --- running the README ------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Runner:
    """Runs README steps in `cwd` with the workspace in `env`, recording what each printed."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.cwd, self.env = cwd, env
        self.values: dict[str, object] = {"ui_port": _free_port()}
        self.timings: list[tuple[float, str]] = []
        self.log = cwd / "readme-run.log"  # every step's text and output, for a failure

    def record(self, text: str, out: str) -> None:
        with self.log.open("a") as f:
            f.write(f"$ {text}\n{out}\n")

    def substitute(self, text: str) -> str:
        for old, new in SUBSTITUTIONS:
            if old in text:
                if "{port}" in new or "{key" in new:
                    self._endpoint_values()
                text = text.replace(old, new.format(**self.values))
        return text

    def _endpoint_values(self) -> None:
        show = json.loads(self.chattune("endpoint", "show", ENDPOINT, "--json").stdout)
        keys = json.loads(self.chattune("endpoint", "get-keys", ENDPOINT, "--json").stdout)
        self.values.update(port=show["port"], key=keys["primary_key"])

    def chattune(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """A helper call (not a README line): must succeed."""
        r = self.run([str(BIN / "chattune"), *args], timeout)
        assert r.returncode == 0, r.stdout + r.stderr
        return r

    def run(self, argv: list[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            argv, cwd=self.cwd, env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def step(self, step: Step) -> None:
        text = self.substitute(step.text)
        t0 = time.monotonic()
        if step.kind == "chattune" and ("--follow" in text or text.startswith("chattune ui")):
            self.blocking(text)
        elif step.kind == "chattune":
            r = self.run(shlex.split(text))
            out = r.stdout + r.stderr
            self.record(text, out)
            rc, needles = next((v for k, v in EXPECT.items() if step.text.startswith(k)), (0, ()))
            assert r.returncode == rc, f"{text}\nexit {r.returncode}, expected {rc}\n{out[-3000:]}"
            for needle in needles:
                assert needle in out, f"{text}\n{needle!r} not in the output:\n{out[-3000:]}"
        elif step.kind == "bash":  # the HTTP API's KEY=$(...) and curl
            r = self.run(["bash", "-euo", "pipefail", "-c", text])
            self.record(text, r.stdout + r.stderr)
            assert r.returncode == 0, f"{text}\n{r.stdout}{r.stderr}"
            assert isinstance(json.loads(r.stdout)["output"], str), r.stdout
        else:
            r = self.run([sys.executable, "-c", text])
            self.record(text, r.stdout + r.stderr)
            assert r.returncode == 0, f"{text}\n{r.stdout}{r.stderr[-3000:]}"
            if "OpenAI(" in text:  # the streamed chunks printed the reply
                assert r.stdout.strip(), f"no text streamed:\n{r.stdout}{r.stderr}"
        self.timings.append((time.monotonic() - t0, text))

    def blocking(self, text: str) -> None:
        """Start a command that runs until stopped, check that it works, stop it."""
        proc = subprocess.Popen(
            shlex.split(text),
            cwd=self.cwd,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its children (the MLflow server) are in its group
        )
        lines: list[str] = []
        threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
        works: Callable[[], bool] = (
            (lambda: any("starting instance 0" in line for line in lines))
            if "--follow" in text
            else self._ui_serves_the_job
        )
        try:
            deadline = time.monotonic() + 180  # the MLflow UI starts in 15 s on an idle CPU
            while not works():
                out = "".join(lines)
                assert proc.poll() is None, f"{text} exited {proc.returncode}:\n{out}"
                assert time.monotonic() < deadline, f"{text}: not working after 180 s:\n{out}"
                time.sleep(0.3)
            assert proc.poll() is None, f"{text} should keep running until stopped"
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
            self.record(text, "".join(lines))

    def _ui_serves_the_job(self) -> bool:
        """The MLflow UI answers with the run of the README's job `my-job`."""
        import httpx

        if "run_id" not in self.values:
            job = json.loads(self.chattune("job", "show", "my-job", "--json").stdout)
            self.values["run_id"] = job["mlflow_run_id"]
        url = f"http://127.0.0.1:{self.values['ui_port']}/ajax-api/2.0/mlflow/runs/get"
        try:
            r = httpx.get(url, params={"run_id": self.values["run_id"]}, timeout=5)
        except httpx.TransportError:
            return False
        assert r.status_code == 200, r.text
        return r.json()["run"]["info"]["status"] == "FINISHED"


@pytest.mark.integration
def test_readme_runs_in_order(tmp_path: Path, tiny_llama_dir: Path) -> None:
    from tests.docs.tiny_gguf import write_tiny_llama_gguf
    from tests.serving.control.supervised import kill_all, processes_under

    env = {
        **os.environ,
        "CHATTUNE_HOME": str(tmp_path / "ws"),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    shutil.copytree(tiny_llama_dir, tmp_path / "my-hf-folder")
    write_tiny_llama_gguf(tiny_llama_dir, tmp_path / "model.Q8_0.gguf")
    runner = Runner(tmp_path, env)
    for name, body in BLOCK_FILES.items():
        (tmp_path / name).write_text(runner.substitute(body))
    deleted = False
    t0 = time.monotonic()
    try:
        for step in STEPS:
            runner.step(step)
            if step.text.startswith(f"chattune endpoint delete {ENDPOINT}"):
                deleted = True
                assert processes_under(str(tmp_path)) == [], "a process outlived the endpoint"
    finally:
        try:
            if not deleted:
                runner.run([str(BIN / "chattune"), "endpoint", "delete", ENDPOINT], timeout=120)
        finally:
            kill_all(str(tmp_path))
        slowest = sorted(runner.timings, reverse=True)[:8]
        print(f"\nREADME ran in {time.monotonic() - t0:.0f} s ({runner.log}); slowest steps:")
        for seconds, text in slowest:
            print(f"  {seconds:6.1f} s  {text.splitlines()[0][:100]}")

    ws = tmp_path / "ws"
    imported = {p.name for p in (ws / "models").iterdir()}
    assert {"SmolLM2-135M-Instruct", "mine", "model.Q8_0"} <= imported
    assert not (ws / "models" / "smol-chitchat" / "1732550400").exists()  # model delete ran
    assert (tmp_path / "converted").is_dir() and (tmp_path / "chitchat_dataset").is_dir()
