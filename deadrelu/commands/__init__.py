"""One module per command of the `deadrelu` command line (see `deadrelu.cli.build_parser`).

Each module defines `ORDER`, `register(subparsers, parents) -> parser` and
`run(args, output) -> exit code`. Modules import TensorFlow only inside `run`.
"""
