"""`chattune`: entry point. Errors are mapped to a message and an exit code here, once."""

from __future__ import annotations

import sys

import click
import typer

from chattune import __version__
from chattune.cli import compute, data, model
from chattune.cli.common import err_console
from chattune.errors import ChattuneError

app = typer.Typer(
    name="chattune",
    help="Fine-tune chat models, register them and serve them, on your own machines.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(model.app, name="model", help="Model catalog, import and versions.")
app.add_typer(compute.app, name="compute", help="Computes of the workspace and memory fit.")
app.add_typer(data.app, name="data", help="Download, validate and inspect chat datasets.")


@app.command()
def version() -> None:
    """Print chattune's version."""
    print(__version__)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; domain errors print `error: ...` and `fix: ...` and set the exit code."""
    command = typer.main.get_command(app)
    try:
        command.main(args=argv, prog_name="chattune", standalone_mode=False)
    except ChattuneError as exc:
        err_console.print(f"[bold red]error:[/] {exc.message}", highlight=False)
        if exc.fix:
            err_console.print(f"[bold]fix:[/] {exc.fix}", highlight=False)
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except (click.exceptions.Abort, KeyboardInterrupt):
        err_console.print("interrupted")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
