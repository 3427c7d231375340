"""The `harmony` command line."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from harmony import __version__
from harmony.data.errors import DataError


def _say(line: str) -> None:
    """Progress and log lines: flushed at once, so that a log file follows the run."""
    print(line, flush=True)


def _add_data_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir",
        metavar="DIR",
        help="folder holding the traces (default: $HARMONY_DATA_DIR, else ./data)",
    )


def _add_binning(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--binning",
        metavar="RULE",
        help="which grid point a row's timestamp goes to: 'nearest' (a bin centred on the point; the default "
        "unless the card's cleaning.binning says otherwise) or 'left' (the step [t, t + step) it falls in, "
        "as pandas resample(closed='left', label='left'))",
    )


def _cmd_list(args: argparse.Namespace) -> int:
    from harmony.data.catalog import data_dir, dataset_root, list_cards

    root = data_dir(args.data_dir)
    print(f"datasets (cards in datasets/, data under {root}):")
    for card in list_cards():
        here = "present" if dataset_root(card, root).is_dir() else "not fetched"
        demand = ",".join(d.name for d in card.demand)
        print(f"  {card.name:<26} {card.frequency.total_seconds()!s:>6}s  {here:<11}  demand={demand}")
        print(f"  {'':<26} {card.title}")
    return 0


def _load_for_show(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from harmony.data.catalog import load
    from harmony.data.spec import load_card, parse_binning

    binning = parse_binning(args.binning, where="--binning") if args.binning else None
    target = load_card(args.name) if args.name.endswith((".yaml", ".yml")) else args.name
    series = [args.series] if args.series else None
    return load(target, root=args.data_dir, series=series, frequency=args.freq, binning=binning)


def _cmd_show(args: argparse.Namespace) -> int:
    from harmony.data.summary import cleaning_report, overview, render_table

    trace = _load_for_show(args)
    print(overview(trace, args.series))
    print()
    print(render_table(trace.stats(args.series)))
    print()
    print(cleaning_report(trace, args.series))
    if args.plot:
        from harmony.data.plot import plot_series

        sid = args.series or trace.series_ids[0]
        out = plot_series(trace, sid, args.plot)
        print(f"\nplot of series {sid} written to {out}")
    return 0


def _cmd_fetch(args: argparse.Namespace) -> int:
    from harmony.data.catalog import data_dir, get_card
    from harmony.data.fetch import fetch_dataset

    card = get_card(args.name)
    root = data_dir(args.data_dir)
    result = fetch_dataset(card, root, mirror=args.mirror, force=args.force, progress=not args.quiet)
    print(
        f"{card.name}: {len(result.downloaded)} downloaded, "
        f"{len(result.skipped)} already present and verified, "
        f"{result.bytes_downloaded:,} bytes, into {result.directory}"
    )
    if result.unverified:
        print(f"  {len(result.unverified)} file(s) have no published checksum and were not verified")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from harmony.data.loaders.table import load_table
    from harmony.data.spec import (
        CleaningRules,
        load_card,
        parse_binning,
        parse_frequency,
        parse_indicator_arg,
    )
    from harmony.data.summary import cleaning_report, overview, render_table

    binning = parse_binning(args.binning, where="--binning") if args.binning else None
    cleaning: CleaningRules | None
    if args.card:
        card = load_card(args.card)
        indicators = list(card.indicators)
        opts = card.options
        ts_col = args.timestamp_column or str(opts.get("timestamp_column", "timestamp"))
        series_col = args.series_column or opts.get("series_column")
        freq = parse_frequency(args.freq, where="--freq") if args.freq else card.frequency
        cleaning = card.cleaning if binning is None else dataclasses.replace(card.cleaning, binning=binning)
    else:
        if not args.indicator:
            raise DataError("declare the indicators with --indicator (repeatable) or give a --card")
        indicators = [parse_indicator_arg(t) for t in args.indicator]
        ts_col = args.timestamp_column or "timestamp"
        series_col = args.series_column
        freq = parse_frequency(args.freq, where="--freq") if args.freq else None  # type: ignore[assignment]
        cleaning = None if binning is None else CleaningRules(binning=binning)
    trace = load_table(
        args.path,
        indicators=indicators,
        timestamp_column=ts_col,
        series_column=series_col,
        frequency=freq,
        delimiter=args.delimiter,
        timezone=args.timezone,
        cleaning=cleaning,
    )
    if trace.notes:
        print(f"USABLE WITH {len(trace.notes)} WARNING(S): {args.path}")
        for note in trace.notes:
            print(f"  warning: {note}")
        print()
    else:
        print(f"OK: {args.path} is usable.\n")
    print(overview(trace))
    print()
    print(render_table(trace.stats()))
    print()
    print(cleaning_report(trace))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from harmony.training.config import load_config
    from harmony.training.train import train

    config = load_config(args.config, args.set or [])
    result = train(config, resume=args.resume, register=args.register, log=_say)
    if not result.primary:  # an extra DDP process: the primary one reports
        return 0
    m = result.metrics
    print()
    print(f"run        {result.run_id}{' (resumed)' if result.resumed else ''}")
    print(f"  tracking {result.tracking_uri}  (browse: mlflow ui --backend-store-uri {result.tracking_uri})")
    print(f"  artifacts {result.artifact_uri}")
    print(f"model      {result.model_uri}  (mlflow.pyfunc.load_model)")
    if result.registered:
        name, version = result.registered
        print(f"  registered as models:/{name}/{version}")
    print(f"  forecaster folder {result.forecaster_dir}  (Forecaster.load)")
    for name, path in result.plots.items():
        print(f"plot       {name}: {path}")
    print(f"state      {result.output_dir}  (checkpoints, state.json)")
    fit = result.fit
    val = f"{fit.best_val_loss:.4f} at epoch {fit.best_epoch}" if fit.best_val_loss is not None else "-"
    print(f"fit        {fit.epochs} epochs in {fit.seconds:.1f}s, best val_loss {val}")
    print(f"test       {_scores_line(m, 'test/')}")
    return 0


_SCORES = ("crps", "wql", "mase", "coverage_50", "coverage_90", "pit_coverage_90")


def _scores_line(metrics: dict[str, float], prefix: str = "") -> str:
    return ", ".join(f"{k} {metrics[prefix + k]:.4g}" for k in _SCORES if prefix + k in metrics)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import mlflow

    from harmony.training.config import config_from_dict, load_config
    from harmony.training.evaluate import compare, format_summary, score_trained
    from harmony.training.train import TrainError, torch_threads, tracking_uri

    names = [n.strip() for n in args.models.split(",") if n.strip()]
    trained = None
    if args.model is not None:
        from harmony.training.trained import load_trained

        trained = load_trained(args.model)
        if args.config is not None:
            config = load_config(args.config, args.set or [])
        elif trained.config is not None:
            config = config_from_dict(trained.config, overrides=args.set or [])
        else:
            raise TrainError(
                f"--model {args.model!r}: the configuration it was trained with is not recorded there; give "
                "the training config with --config (its data section names the trace to score on)"
            )
    elif args.config is not None:
        config = load_config(args.config, args.set or [])
    else:
        raise TrainError("give --config (train and compare --models) or --model (score a trained forecaster)")
    part_words = "validation" if args.part == "val" else "test"
    with torch_threads(config.trainer.num_threads):
        if trained is not None:
            run_note = f", training run {trained.run_id}" if trained.run_id else ""
            print(f"model      {trained.forecaster.name} from {trained.source}{run_note}", flush=True)
            scored = score_trained(
                config,
                trained.forecaster,
                baseline=args.baseline,
                part=args.part,
                log=_say,
                executor=args.executor,
                ray_address=args.ray_address,
            )
            evaluation = scored.comparison
            print(f"\n{part_words:<10} {_scores_line(scored.metrics)}  ({scored.windows} windows)")
            print(
                "           the training run's protocol: the same windows, draws and seed as its test scores"
            )
        else:
            evaluation = compare(
                config,
                names,
                baseline=args.baseline,
                log=_say,
                part=args.part,
                executor=args.executor,
                ray_address=args.ray_address,
            )
    print(f"\nscored on the {part_words} part")
    print(format_summary(evaluation))
    mlflow.set_tracking_uri(tracking_uri())
    mlflow.set_experiment(config.tracking.experiment)
    with mlflow.start_run(run_name=f"evaluate-{Path(config.data.dataset).stem}") as run:
        mlflow.log_params(
            {
                "config": str(args.config) if args.config else "",
                "model_uri": args.model or "",
                "models": ",".join(names) if trained is None else trained.forecaster.name,
                "baseline": args.baseline,
                "part": args.part,
                "overrides": " ".join(args.set or []),
            }
        )
        if trained is not None:
            mlflow.log_metrics({f"{args.part}/{k}": v for k, v in scored.metrics.items() if v == v})
            if trained.run_id:
                mlflow.set_tag("harmony.model_run_id", trained.run_id)
        for model, row in evaluation.summary.iterrows():
            mlflow.log_metrics({f"{model}/{k}": float(v) for k, v in row.items() if v == v})
        mlflow.log_text(evaluation.summary.to_csv(), "evaluation/summary.csv")
        mlflow.log_text(evaluation.per_series.to_csv(), "evaluation/per_series.csv")
        mlflow.log_text(format_summary(evaluation), "evaluation/table.txt")
    print(f"\nlogged to MLflow run {run.info.run_id} ({tracking_uri()})")
    return 0


def _cmd_backtest(args: argparse.Namespace) -> int:
    import time

    from harmony.backtest import load_backtest_config, run_config
    from harmony.report import publish
    from harmony.report_tables import headline_tables

    t0 = time.perf_counter()
    config = load_backtest_config(args.config, args.set or [])
    run = run_config(config, log=_say)
    published = publish(run, log=_say)
    print()
    print(headline_tables(run.result))
    print()
    print(f"report     {published.files.html}")
    if published.files.text is not None:
        print(f"all tables {published.files.text}  (per service, hindsight, every setting replayed)")
    for name, path in published.files.plots.items():
        print(f"plot       {name}: {path}")
    tables = "validated, per_service, hindsight, summary, per_run .csv"
    print(f"tables     {published.output_dir / 'tables'}  ({tables})")
    print(f"run        {published.run_id}")
    print(f"time       {time.perf_counter() - t0:.1f} s")
    print(f"browse     mlflow ui --backend-store-uri {published.tracking_uri}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="harmony",
        description="Forecast the distribution of a service's indicators and scale it within its SLA "
        "at the lowest cost.",
    )
    parser.add_argument("--version", action="version", version=f"harmony {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ds = sub.add_parser(
        "datasets", help="list, inspect, fetch and check traces", description="Work with traces."
    )
    dsub = ds.add_subparsers(dest="datasets_command", required=True, metavar="ACTION")

    p = dsub.add_parser("list", help="list the known datasets", description="List the dataset cards.")
    _add_data_dir(p)
    p.set_defaults(func=_cmd_list)

    p = dsub.add_parser(
        "show",
        help="summarise a dataset: span, frequency, indicators, statistics, cleaning report",
        description="Load a dataset through its card and summarise it: span, frequency, series count, "
        "indicators with units and levels, basic statistics and what cleaning changed.",
    )
    p.add_argument("name", help="dataset name (see `harmony datasets list`) or a path to a card .yaml")
    p.add_argument("--series", metavar="ID", help="one series (container, VM, service) instead of all")
    p.add_argument(
        "--plot", metavar="OUT.png", help="write a plot of the series (the first if --series is not given)"
    )
    p.add_argument("--freq", metavar="STEP", help="resample or re-bin to this step, e.g. 1min, 300s")
    _add_binning(p)
    _add_data_dir(p)
    p.set_defaults(func=_cmd_show)

    p = dsub.add_parser(
        "fetch",
        help="download a dataset from its public source and verify its SHA-256",
        description="Download a dataset's files into the data directory with a progress bar, verify each "
        "SHA-256, resume broken transfers, and never leave a half-written file.",
    )
    p.add_argument("name", help="dataset name")
    p.add_argument(
        "--mirror", metavar="URL", help="fetch the staged files from a mirror of the data folder instead"
    )
    p.add_argument("--force", action="store_true", help="download again even when a verified copy is present")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_data_dir(p)
    p.set_defaults(func=_cmd_fetch)

    p = dsub.add_parser(
        "check",
        help="validate your own CSV/Parquet metrics file and explain every problem",
        description="Validate a table of your own metrics: a timestamp column, one column per indicator and "
        "an optional series column. Indicators come from --indicator or a --card. Every problem is listed "
        "with its row and column; a usable file gets the summary and cleaning report.",
        epilog="--indicator form: NAME:UNIT:LEVEL:KIND[:counter|gauge][:capacity=C][:column=COL], e.g. "
        "requests:req/s:1:demand:capacity=20  cpu:cores:2:resource:counter:column=cpu_seconds_total",
    )
    p.add_argument("path", help="CSV (.csv, .csv.gz, .tsv) or Parquet file")
    p.add_argument("--card", metavar="CARD.yaml", help="a dataset card describing the file")
    p.add_argument("--indicator", action="append", metavar="SPEC", help="declare an indicator (repeatable)")
    p.add_argument("--timestamp-column", metavar="COL", help="timestamp column (default: timestamp)")
    p.add_argument("--series-column", metavar="COL", help="column naming the series (pod, VM, service)")
    p.add_argument("--delimiter", metavar="CHAR", help="CSV delimiter (default: detected from the header)")
    p.add_argument("--timezone", default="UTC", help="zone of timestamps without an offset (default: UTC)")
    p.add_argument("--freq", metavar="STEP", help="sampling step (default: the median step in the file)")
    _add_binning(p)
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser(
        "train",
        help="train a forecaster from a YAML config and record the run in MLflow",
        description="Train the forecaster a config describes, evaluate it on the test split and log "
        "everything to MLflow: params, per-epoch losses, test metrics, the model (a pickle-free folder and "
        "a pyfunc model), a fan chart and a calibration chart. The store is $MLFLOW_TRACKING_URI, else "
        "sqlite:///mlflow.db in the working directory. Checkpoints and run state go to "
        "tracking.output_dir (default runs/<run_name>).",
        epilog="Examples: harmony train --config configs/fisher_containers.yaml --set trainer.max_epochs=5 "
        "model.hparams.d_model=32;  on GPUs: --set trainer.accelerator=gpu trainer.devices=2 "
        "trainer.strategy=ddp;  after a crash: the same command with --resume.",
    )
    p.add_argument(
        "--config", required=True, metavar="CONFIG.yaml", help="training configuration (configs/*.yaml)"
    )
    p.add_argument(
        "--set",
        action="extend",
        nargs="+",
        metavar="KEY=VALUE",
        help="override config keys, dotted and typed as YAML, e.g. model.lookback=72 trainer.progress=false "
        "(repeatable)",
    )
    p.add_argument(
        "--register", metavar="NAME", help="register the model as a new version of this registered model"
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the killed run of this config: same MLflow run, from its last checkpoint",
    )
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "evaluate",
        help="score a trained forecaster (--model), or train several models and compare them (--models)",
        description="With --model: load a trained forecaster (a training folder, a run or a registered "
        "model) and score it, without training, on the test split (or with --part val the validation "
        "split) of the data it was trained on, by the training run's own protocol (the same numbers), and "
        "against the baseline. Without: train every listed model with the config's data, window geometry "
        "and training budget and score each. Metrics: CRPS, weighted quantile loss, MASE, energy score, "
        "interval coverage; the table is relative to the baseline (geometric mean over series and targets) "
        "and is logged to MLflow.",
        epilog="Examples: harmony evaluate --model runs/fisher_containers;  harmony evaluate --model "
        "models:/fisher-forecaster/1;  harmony evaluate --config configs/fisher_containers.yaml --models "
        "harmony,flat,seasonal_naive --part val",
    )
    p.add_argument(
        "--model",
        metavar="URI",
        help="a trained forecaster: a training output folder (runs/NAME), its forecaster/ folder, a run id, "
        "runs:/<run id>, or models:/<name>/<version>; scored without training",
    )
    p.add_argument(
        "--config",
        metavar="CONFIG.yaml",
        help="a training config (configs/); with --model, optional: the model's recorded one by default",
    )
    p.add_argument(
        "--models",
        default="harmony,gaussian,flat,deepar,seasonal_naive,harmony_ref",
        help="without --model: comma-separated registered model names to train and compare (default: all)",
    )
    p.add_argument("--baseline", default="seasonal_naive", help="the model ratios are taken against")
    p.add_argument(
        "--part",
        choices=("test", "val"),
        default="test",
        help="split part to score on: test (default), or val to choose hyper-parameters without seeing test",
    )
    p.add_argument(
        "--executor",
        choices=("local", "ray"),
        default="local",
        help="where the (model, series) scoring runs: this process (default) or Ray tasks ([ray] extra)",
    )
    p.add_argument(
        "--ray-address",
        default=None,
        help="with --executor ray: a cluster to join (auto, ray://host:10001); default RAY_ADDRESS, or local",
    )
    p.add_argument(
        "--set",
        action="extend",
        nargs="+",
        metavar="KEY=VALUE",
        help="override config keys, dotted and typed as YAML (repeatable)",
    )
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser(
        "backtest",
        help="choose every policy's knobs on a trace's validation part, compare their costs on its test part",
        description="Replay a trace through HARMONY and every baseline (quantile-only, point forecast, "
        "crane's EHPA, ARIMA and ETS forecasts, the Kubernetes HPA with its whole behavior, static peak, "
        "perfect-foresight oracle): each decides from the history up to each step and its count takes "
        "effect after the lead time. Every knob of every policy is chosen on the validation part (the "
        "cheapest setting within the target violation rate there, in total and with every series within "
        "it), frozen, and replayed on the test part. Prints those test figures first (cost, realised rates "
        "in total and of the worst series, the share of the gap between the best baseline and the lower "
        "bound that HARMONY captures), then the hindsight frontier; writes PNG charts and one "
        "self-contained HTML report, and logs everything to MLflow ($MLFLOW_TRACKING_URI, else "
        "sqlite:///mlflow.db).",
        epilog="Example: harmony backtest --config configs/backtest/fisher_containers.yaml "
        "--set trainer.num_threads=1 backtest.max_steps=288 policies.static=null",
    )
    p.add_argument("--config", required=True, metavar="CONFIG.yaml", help="backtest configuration")
    p.add_argument(
        "--set",
        action="extend",
        nargs="+",
        metavar="KEY=VALUE",
        help="override config keys (any section, training ones included), dotted and typed as YAML",
    )
    p.set_defaults(func=_cmd_backtest)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from harmony.output import quiet_third_party

    parser = build_parser()
    args = parser.parse_args(argv)
    quiet_third_party()
    try:
        return int(args.func(args))
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyError as exc:
        print(f"error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, and keep Python from complaining at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    raise SystemExit(main())
