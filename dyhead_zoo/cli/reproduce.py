"""``dyhead-zoo reproduce``: published vs measured mAP of every variant."""
from __future__ import annotations

import argparse
from typing import Sequence

from dyhead_zoo.cli.checks import check_output_dir, check_weights, load_data
from dyhead_zoo.cli.evaluate import add_run_arguments
from dyhead_zoo.distributed import distributed, resolve_device


def _parse_weights(items: Sequence[str]) -> dict[str, str]:
    weights = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--weights {item!r}: write it as NAME=PATH, e.g. "
                             "dyhead_r50_atss_fpn_1x=checkpoints/dyhead_r50_atss_fpn_1x.pth")
        weights[name] = path
    return weights


def cmd_reproduce(args: argparse.Namespace) -> int:
    """``dyhead-zoo reproduce``: evaluate each variant, print and write the table on rank 0."""
    from dyhead_zoo.configs import get_config, list_models
    from dyhead_zoo.evaluation.reproduce import markdown_table, reproduce, write_table

    models = args.models or list_models()
    for name in models:
        get_config(name)  # unknown names fail here, with the list of known ones
    weights = _parse_weights(args.weights)
    check_weights(models, weights)
    check_output_dir(args.output_dir)
    data = load_data(args)
    device = resolve_device(args.device)
    with distributed(device) as group:
        rows = reproduce(data, models, args.output_dir, weights, device=device, limit=args.limit,
                         batch_size=args.batch_size, workers=args.workers, min_size=args.min_size,
                         max_size=args.max_size, progress=not args.no_progress, group=group,
                         allow_unsafe_pickle=args.allow_unsafe_pickle)
    if rows is not None:
        json_path, md_path = write_table(rows, args.output_dir)
        print(markdown_table(rows), end="")
        print(f"table: {json_path} and {md_path}")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    """Add the ``reproduce`` command."""
    rp = commands.add_parser("reproduce", help="published vs measured mAP of every variant",
                             description="Evaluate the variants and print (and write as JSON and Markdown under "
                                         "--output-dir) published mAP, measured mAP, difference, images/s, device.")
    rp.add_argument("--models", nargs="+", metavar="NAME", help="a subset (default: all of them)")
    rp.add_argument("--weights", action="append", default=[], metavar="NAME=PATH",
                    help="local checkpoint of one variant (repeatable); the others use the published weights")
    add_run_arguments(rp)
    rp.set_defaults(func=cmd_reproduce)
