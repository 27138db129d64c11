"""``dlrm-bench data``: generate synthetic data, preprocess raw Criteo days, inspect a data dir."""

from __future__ import annotations

import argparse
from typing import Any

from dlrm_bench.errors import UserError


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "data", help="generate, preprocess and check Criteo Terabyte data",
        description="Synthetic Criteo-like data, raw day_N[.gz] preprocessing, integrity checks.",
    )
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    synth = sub.add_parser(
        "synth", help="write synthetic train/test binaries (and optionally raw TSV days)",
        description="Deterministic Criteo-like data with a learnable click signal, in the "
        "MLPerf binary layout; --raw also writes raw/day_N TSV files.",
    )
    synth.add_argument("--out", required=True, metavar="DIR", help="output data directory")
    synth.add_argument("--preset", default="tiny", help="table sizes of this preset (default tiny)")
    synth.add_argument("--train-samples", type=int, default=1_000_000, metavar="N")
    synth.add_argument("--test-samples", type=int, default=100_000, metavar="M")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--positive-rate", type=float, default=0.2, help="target click rate")
    synth.add_argument("--raw", action="store_true", help="also write raw TSV day files")
    synth.add_argument("--raw-days", type=int, default=1, metavar="K",
                       help="spread the training rows over K raw days (the test set is day_K)")
    synth.add_argument("--workers", type=int, default=None, help="generator threads")
    synth.set_defaults(func=cmd_synth)

    prep = sub.add_parser(
        "preprocess", help="raw Criteo day_N[.gz] files -> binary train/test files",
        description="Several days: the last one is the test set; one day: its last 1/24.",
    )
    prep.add_argument("raw", nargs="+", metavar="RAW", help="day_N or day_N.gz files")
    prep.add_argument("--out", required=True, metavar="DIR", help="output data directory")
    prep.add_argument("--max-ind-range", type=int, default=40_000_000, metavar="R",
                      help="categorical = int(hex, 16) %% R before remapping (default 40M)")
    prep.add_argument("--sub-sample-rate", type=float, default=1.0, metavar="F",
                      help="keep each training negative with probability F (default 1)")
    prep.add_argument("--seed", type=int, default=0, help="seed of the negative sub-sampling")
    prep.add_argument("--strict", action="store_true", help="fail on the first malformed line")
    prep.add_argument("--workers", type=int, default=None, help="parser processes")
    prep.set_defaults(func=cmd_preprocess)

    info = sub.add_parser(
        "info", help="records, positive rate, table sizes and integrity of a data dir",
        description="Exit status 1 when an integrity check fails.",
    )
    info.add_argument("dir", metavar="DIR", help="data directory")
    info.set_defaults(func=cmd_info)


def cmd_synth(args: argparse.Namespace) -> int:
    from dlrm_bench.data.synth import generate
    from dlrm_bench.presets import get_preset

    spec = get_preset(args.preset)
    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers must be at least 1, got {args.workers}")
    summary = generate(
        args.out, spec, args.train_samples, args.test_samples, seed=args.seed, raw=args.raw,
        raw_days=args.raw_days, positive_rate=args.positive_rate, workers=args.workers,
    )
    for split, n in summary.records.items():
        rate = summary.positives[split] / n
        print(f"{split}: {n} records, positive rate {rate:.4f}")
    for path in summary.raw_files:
        print(f"raw: {path}")
    print(f"wrote {summary.out_dir} in {summary.seconds:.1f} s "
          f"({summary.records_per_second:,.0f} records/s)")
    return 0


def cmd_preprocess(args: argparse.Namespace) -> int:
    from dlrm_bench.data.preprocess import preprocess

    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers must be at least 1, got {args.workers}")
    report = preprocess(
        args.raw, args.out, max_ind_range=args.max_ind_range,
        sub_sample_rate=args.sub_sample_rate, seed=args.seed, strict=args.strict,
        workers=args.workers,
    )
    print(f"lines read: {report.lines}")
    print(f"train: {report.train_records} records from "
          f"{', '.join(str(p) for p in report.train_files)}")
    print(f"test: {report.test_records} records from "
          f"{', '.join(str(p) for p in report.test_files)}")
    if report.dropped_negatives:
        print(f"sub-sampling dropped {report.dropped_negatives} training negatives")
    if report.malformed:
        kinds = ", ".join(f"{k}: {n}" for k, n in sorted(report.malformed_by_kind.items()))
        print(f"malformed lines skipped: {report.malformed} ({kinds})")
        for example in report.examples:
            print(f"  {example}")
    print(f"table sizes: {list(report.counts)}")
    print(f"wrote {report.out_dir} in {report.seconds:.1f} s")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    import sys

    from rich.console import Console
    from rich.table import Table

    from dlrm_bench.data.format import RECORD_BYTES, SPLITS, split_path
    from dlrm_bench.data.reader import check_record_file, read_table_sizes, scan_file

    counts = read_table_sizes(args.dir)
    paths = [split_path(args.dir, split) for split in SPLITS]
    for path in paths:  # refuse unreadable files before scanning any of them
        check_record_file(path)
    table = Table(title=f"{args.dir}: terabyte_processed_{{train,test}}.bin")
    for column in ("split", "records", "bytes", "positive rate", "problems"):
        table.add_column(column, justify="left" if column in ("split", "problems") else "right")
    problems: list[str] = []
    for split, path in zip(SPLITS, paths, strict=True):
        stats = scan_file(path, counts)
        found = stats.problems()
        problems += [f"{path}: {p}" for p in found]
        table.add_row(split, f"{stats.records:,}", f"{stats.records * RECORD_BYTES:,}",
                      f"{stats.positive_rate:.4f}", "; ".join(found) or "none")
    console = Console()
    console.print(table)
    console.print(f"table sizes ({len(counts)}): {list(counts)}", soft_wrap=True)
    if problems:
        for p in problems:
            print(f"dlrm-bench: integrity check failed: {p}", file=sys.stderr)
        return 1
    console.print("integrity: ok")
    return 0
