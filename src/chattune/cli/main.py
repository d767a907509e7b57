"""`chattune`: entry point. Errors are mapped to a message and an exit code here, once."""

from __future__ import annotations

import signal
import sys
import threading

import typer
from rich.markup import escape
from typer._click.exceptions import ClickException, NoArgsIsHelpError

from chattune import __version__
from chattune.cli import compute, data, deployment, endpoint, engine, job, model
from chattune.cli.common import WorkspaceOpt, err_console, open_workspace
from chattune.errors import ChattuneError
from chattune.serving.control.lifecycle import bring_up
from chattune.serving.control.watch import CHECK_S, Watcher, say
from chattune.serving.deployments import list_deployments
from chattune.serving.endpoints import list_endpoints
from chattune.workspace import Workspace

app = typer.Typer(
    name="chattune",
    help="Fine-tune chat models, register them and serve them, on your own machines.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(model.app, name="model", help="Model catalog, import and versions.")
app.add_typer(compute.app, name="compute", help="Computes of the workspace and memory fit.")
app.add_typer(data.app, name="data", help="Download, validate and inspect chat datasets.")
app.add_typer(job.app, name="job", help="Fine-tuning jobs: create, stream, cancel, resume.")
app.add_typer(endpoint.app, name="endpoint", help="Online endpoints: keys, traffic, invoke.")
app.add_typer(deployment.app, name="deployment", help="Deployments of an online endpoint.")
app.add_typer(engine.app, name="engine", help="Serving engines: list, install vLLM.")


@app.command()
def version() -> None:
    """Print chattune's version."""
    print(__version__)


@app.command()
def up(
    workspace: WorkspaceOpt = None,
    timeout: float = typer.Option(900.0, help="Seconds to wait for each deployment."),
    watch: bool = typer.Option(
        False,
        "--watch",
        help="Keep every endpoint running: restart one whose supervisor dies or hangs "
        "(backoff 1, 2, 4 ... 60 s); runs until SIGTERM or Ctrl-C, which leave the endpoints "
        "running.",
    ),
    interval: float = typer.Option(
        CHECK_S, min=0.1, help="With --watch: seconds between two checks of the endpoints."
    ),
) -> None:
    """Bring back every stopped endpoint: same port, keys, deployments and traffic.

    Run it after a machine restart; it waits until each deployment is ready (or failed).
    With --watch it does not wait: it starts what is stopped and keeps checking.
    """

    ws = open_workspace(workspace)
    if watch:
        _watch(ws, interval)
        return
    started = bring_up(ws, timeout)
    for ep in started:
        states = ", ".join(f"{d.name} {d.state}" for d in list_deployments(ws, ep.name))
        print(f"endpoint {ep.name} up on {ep.scoring_uri} ({states or 'no deployments'})")
    if not started:
        known = list_endpoints(ws)
        print("every endpoint is already running" if known else "no endpoints in this workspace")


def _watch(ws: Workspace, interval: float) -> None:
    """`up --watch`: run the watcher in the foreground until SIGTERM or SIGINT."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    say(f"watching the endpoints of {ws.root} every {interval:g} s (SIGTERM or Ctrl-C stops)")
    Watcher(ws, check_s=interval).run(stop)
    say("stopped watching; the endpoints keep running")


@app.command()
def ui(
    port: int = typer.Option(5000, help="Port of the MLflow UI."),
    host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
    workspace: WorkspaceOpt = None,
) -> None:
    """Open the MLflow UI on the workspace's tracking store (runs until Ctrl-C)."""
    import subprocess

    ws = open_workspace(workspace)
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        ws.mlflow_tracking_uri,
        "--default-artifact-root",
        ws.mlflow_artifact_location,
        "--host",
        host,
        "--port",
        str(port),
        # one user, one machine: mlflow's default of 4 workers doubles the start-up (15 s of
        # CPU each) on a 2-core machine and serves no one faster
        "--workers",
        "1",
    ]
    print(f"MLflow UI on http://{host}:{port} (tracking store {ws.mlflow_tracking_uri})")
    raise typer.Exit(subprocess.call(cmd))


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; domain errors print `error: ...` and `fix: ...` and set the exit code."""
    command = typer.main.get_command(app)
    try:
        rc = command.main(args=argv, prog_name="chattune", standalone_mode=False)
    except ChattuneError as exc:
        # escaped: a message quotes values and patterns such as '[a-zA-Z]', not markup
        err_console.print(
            f"[bold red]error:[/] {escape(exc.message)}", highlight=False, soft_wrap=True
        )
        if exc.fix:
            err_console.print(f"[bold]fix:[/] {escape(exc.fix)}", highlight=False, soft_wrap=True)
        return exc.exit_code
    except typer.Exit as exc:
        return exc.exit_code
    except NoArgsIsHelpError as exc:  # `chattune model`: the group's help, as usage
        exc.show()
        return 0
    except ClickException as exc:  # bad flags and values: click's usage message
        exc.show()
        return exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        err_console.print("interrupted")
        return 130
    # typer bundles its own click: with standalone_mode=False, `raise typer.Exit(n)` in a
    # command comes back as the return value
    return rc if isinstance(rc, int) else 0


if __name__ == "__main__":
    sys.exit(main())
