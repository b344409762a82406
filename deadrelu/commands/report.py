"""`deadrelu report`: render a saved JSON report again."""

from __future__ import annotations

from deadrelu.cli import add_output_flags

ORDER = 30


def register(subparsers, parents):
    parser = subparsers.add_parser("report", parents=[parents["common"]], help="render a saved JSON report again")
    parser.add_argument("report", metavar="REPORT.json")
    add_output_flags(parser, json_flag=False)
    return parser


def run(args, output) -> int:
    from deadrelu.commands.scan import emit
    from deadrelu.report import Report

    return emit(Report.from_json(args.report), args, output)
