"""The `queuectl` command: main() runs one command line and is its one error boundary,
turning every error into one line on stderr and an exit code (errors.EXIT_CODES).

The commands are click commands, one module per command group, imported by the
root group (root.py) only when asked for.  `queuectl enqueue`, which scripts call in
loops, is first offered to its pre-parser (fast_enqueue.py), which takes the common
forms without importing click; everything else goes to click.  Importing this
package imports neither click nor the library: the `queuectl` script imports it
first thing.
"""

from __future__ import annotations

import os
import sys

# Not `from typing import TYPE_CHECKING`: typing is a costly import at every start, and
# mypy treats any constant of this name the same way.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any, NoReturn


def main(argv: Sequence[str] | None = None) -> NoReturn:
    args = list(sys.argv[1:] if argv is None else argv)
    from queuectl.errors import QueuectlError

    try:
        rv = _dispatch(args)
    except QueuectlError as exc:
        fail(str(exc), exc.exit_code)
    except BrokenPipeError:
        # `queuectl list | head`: the reader left; that is not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    except KeyboardInterrupt:
        fail("interrupted", 130)
    except Exception as exc:  # never a traceback for a user; QUEUECTL_DEBUG shows it
        if os.environ.get("QUEUECTL_DEBUG"):
            raise
        fail(f"internal error: {type(exc).__name__}: {exc}", 1)
    sys.exit(rv if isinstance(rv, int) else 0)


def _dispatch(args: list[str]) -> Any:
    """Run a form the enqueue pre-parser takes, or hand the call to click."""
    from queuectl.cli import fast_enqueue

    fast = fast_enqueue.parse(args)
    if fast is None:
        return _click_main(args)
    try:
        return fast_enqueue.run(*fast)
    except (EOFError, KeyboardInterrupt):
        # As click.Command.main: a blank line closes the terminal's ^C, then Abort.
        sys.stderr.write("\n")
        sys.stderr.flush()
        fail("aborted", 130)


def _click_main(args: list[str]) -> Any:
    import click

    from queuectl.cli.root import cli

    try:
        return cli.main(args=args, prog_name="queuectl", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help() if exc.ctx else str(exc), err=True)
        sys.exit(2)
    except click.UsageError as exc:
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
        fail(exc.format_message().replace("\n", " ") + hint, 2)
    except click.Abort:
        fail("aborted", 130)
    except click.ClickException as exc:
        fail(exc.format_message(), exc.exit_code or 1)


def fail(message: str, code: int) -> NoReturn:
    import click  # click.echo picks the stream's encoding

    click.echo(f"queuectl: error: {one_line(message)}", err=True)
    sys.exit(code)


def one_line(text: str) -> str:
    """Escape what would break an error message over lines or hide in a terminal
    (newlines, control and separator characters that users' input can carry)."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)
