"""The `kaec` command line: a thin Typer layer over the kaecompress library."""
