"""Command line: ``lightreasoner <command>``. Each command is a thin wrapper over a stage function.

Bad input raises :class:`LightReasonerError`; ``main`` prints it as one line and exits with code 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable

from .errors import LightReasonerError

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def command(name: str):
    def register(fn):
        COMMANDS[name] = fn
        return fn

    return register


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config file (defaults apply to everything it leaves out)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, e.g. --set sampling.beta=auto:0.2 (repeatable)")


def config_from_args(args: argparse.Namespace):
    from .config import load_config

    return load_config(args.config, args.overrides)


# --- commands ---------------------------------------------------------------------------------------


@command("prepare-data")
def cmd_prepare_data(args: argparse.Namespace) -> int:
    from .data import prepare_data

    cfg = config_from_args(args)
    path = prepare_data(cfg.data, args.output)
    print(path)
    return 0


@command("sample")
def cmd_sample(args: argparse.Namespace) -> int:
    from .sampling import sample

    cfg = config_from_args(args)
    shard = parse_shard(args.shard) if args.shard else None
    result = sample(cfg, args.output, reference=args.reference, overwrite=args.overwrite, shard=shard)
    if shard is not None:
        print(f"shard={shard[0]}/{shard[1]} batches={len(result.manifest['batches'])} output={result.output}")
        return 0
    print_sample_summary(result)
    return 0


def parse_shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise LightReasonerError(f"--shard {text!r}: expected I/N, e.g. 0/4") from None
    if count < 1:
        raise LightReasonerError(f"--shard {text!r}: N must be at least 1")
    return index, count


def print_sample_summary(result) -> None:
    counts = result.manifest["counts"]
    print(
        f"problems={counts['problems']} steps={counts['steps']} selected={counts['selected']} "
        f"kept_fraction={counts['kept_fraction']:.3f} effective_beta={result.manifest['effective_beta']:.4f} "
        f"output={result.output}"
    )


@command("merge-samples")
def cmd_merge_samples(args: argparse.Namespace) -> int:
    from .sampling import merge_shards

    cfg = config_from_args(args)
    print_sample_summary(merge_shards(cfg, args.shards, args.output, overwrite=args.overwrite))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="lightreasoner", description="LightReasoner: small models teach large ones.")
    parser.add_argument("--version", action="version", version=f"lightreasoner {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare-data", help="load problems and write a normalised problems.parquet")
    add_config_args(p)
    p.add_argument("--output", required=True, help="output folder (or .parquet file)")

    p = sub.add_parser("sample", help="stage 1: contrastive sampling (Expert vs Amateur)")
    add_config_args(p)
    p.add_argument("--output", required=True, help="output folder for trajectories, samples and manifest")
    p.add_argument("--reference", action="store_true", help="the paper's slow per-prefix scoring (oracle)")
    p.add_argument("--overwrite", action="store_true", help="replace samples of a different config")
    p.add_argument("--shard", metavar="I/N", help="run only shard I of N (join them with merge-samples)")

    p = sub.add_parser("merge-samples", help="join the folders of a sharded sampling run")
    add_config_args(p)
    p.add_argument("shards", nargs="+", help="shard output folders")
    p.add_argument("--output", required=True, help="merged samples folder")
    p.add_argument("--overwrite", action="store_true", help="replace samples of a different config")

    # Later stages add their sub-parsers above this line, one block each.
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return COMMANDS[args.command](args)
    except LightReasonerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


def print_json(data) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str))


if __name__ == "__main__":
    sys.exit(main())
