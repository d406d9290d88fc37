"""`python -m asymtune`: the same command line as `asymtune`."""

from asymtune.cli import main

main(prog_name="asymtune")
