"""`python -m deadrelu` runs the command line."""

from deadrelu.cli import entry

entry()
