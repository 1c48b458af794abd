"""The `lookalike` command (and `python -m lookalike`). Only this module is loaded before Ctrl-C is handled:
the command line itself (`lookalike.cli`, with numpy, typer and the index) is imported inside `run`."""

import sys


def run() -> None:
    try:
        from lookalike.cli import main
    except KeyboardInterrupt:
        sys.stderr.write("interrupted: nothing was done yet\n")
        sys.exit(130)
    main()


if __name__ == "__main__":
    run()
