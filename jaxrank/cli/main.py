"""``jaxrank <command>``: train, evaluate and inspect experiments defined by config files.

Known failure modes (a bad config key, an unusable workdir, a broken checkpoint, a diverged
loss, malformed data) end with one ``jaxrank: error:`` message and exit status 2, not a
traceback from inside JAX; ``--verbose`` adds the full traceback and its chain of causes.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence

from jaxrank.cli import convert, data_check, export, plan, reproduce, search
from jaxrank.cli.arguments import CONFIG_HELP, load_config
from jaxrank.cli.recipes import recipe_module
from jaxrank.cli.run_folder import held_run
from jaxrank.configs import ConfigError
from jaxrank.data.errors import DataError
from jaxrank.distributed import DistributedError
from jaxrank.distributed import initialize as join_processes
from jaxrank.models.hf.errors import (
    CheckpointMismatch,
    UnreadableCheckpoint,
    UnsupportedCheckpoint,
)
from jaxrank.search.errors import SearchError
from jaxrank.train import report
from jaxrank.train.checkpoint import CheckpointError
from jaxrank.train.trainer import NonFiniteLossError
from jaxrank.train.workdir import WorkdirError

USER_ERRORS = (
    ConfigError,
    WorkdirError,
    CheckpointError,
    NonFiniteLossError,
    SearchError,
    FileNotFoundError,  # a file the user named that is gone (models.hf's CheckpointNotFound too)
    UnreadableCheckpoint,
    UnsupportedCheckpoint,
    CheckpointMismatch,
    DistributedError,
    DataError,
)


def _train(args, extra) -> None:
    cfg = load_config(args, extra)
    with held_run(cfg, args.workdir) as workdir:
        recipe_module(cfg).train_and_evaluate(cfg, workdir)


def _evaluate(args, extra) -> None:
    cfg = load_config(args, extra)
    with held_run(cfg, args.workdir, existing=True) as workdir, report.evaluation_report():
        recipe_module(cfg).evaluate_workdir(cfg, workdir)


def _gallery(args, extra) -> None:
    from jaxrank.data.gallery import world_gallery
    from jaxrank.data.synthetic import World, WorldConfig, query_preset

    cfg = load_config(args, extra)
    world = World(WorldConfig(**cfg.world.to_dict()))
    world_gallery(world, query_preset(args.preset), args.n, args.out)
    print(f"wrote {args.out}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxrank", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    config_help = CONFIG_HELP

    train = sub.add_parser("train", help="train (or resume) and evaluate; writes the run folder")
    train.add_argument("--config", required=True, help=config_help)
    train.add_argument("--workdir", required=True, help="run folder (its parent must exist)")
    train.set_defaults(run=_train)

    evaluate = sub.add_parser(
        "eval", help="evaluate the latest checkpoint of a run folder (writes eval_report.*)"
    )
    evaluate.add_argument("--config", required=True, help=config_help)
    evaluate.add_argument("--workdir", required=True)
    evaluate.set_defaults(run=_evaluate)

    gallery = sub.add_parser("gallery", help="render a PNG of synthetic queries with their boxes")
    gallery.add_argument("--config", required=True, help=config_help)
    gallery.add_argument("--preset", default="default", help="query difficulty preset")
    gallery.add_argument("--n", type=int, default=16)
    gallery.add_argument("--out", required=True, help="PNG path")
    gallery.set_defaults(run=_gallery)

    search.add_commands(sub, config_help, load_config)
    convert.add_command(sub)
    export.add_command(sub)
    data_check.add_commands(sub, config_help, load_config)
    reproduce.add_command(sub)
    plan.add_command(sub)
    _add_verbose(parser)
    return parser


def _add_verbose(parser: argparse.ArgumentParser) -> None:
    """``--verbose`` on every command, nested ones (``index build``) included."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command in action.choices.values():
                _add_verbose(command)
            return
    parser.add_argument("--verbose", action="store_true", help="on an error, show the traceback")


def _explain(error: BaseException, verbose: bool) -> str:
    """The error line, and the first line of its cause (the whole chain with ``verbose``)."""
    if verbose:
        return "".join(traceback.format_exception(error)) + f"jaxrank: error: {error}"
    lines = [f"jaxrank: error: {error}"]
    cause = error.__cause__
    if cause is not None:
        first = str(cause).splitlines()[0] if str(cause) else ""
        if first not in str(error):
            lines.append(f"  caused by {type(cause).__name__}: {first}")
        lines.append("  (--verbose shows the full traceback)")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    try:
        join_processes()  # before any JAX computation: a pod's processes become one run
        args.run(args, extra)
    except USER_ERRORS as e:
        print(_explain(e, getattr(args, "verbose", False)), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
