"""Forecast accuracy and calibration of every model on the real traces, side by side.

    python -m benchmarks.accuracy [--configs fisher_containers,bitbrains_rnd,alibaba_gentd26]
                                  [--models harmony,gaussian,flat,deepar,seasonal_naive,harmony_ref]
                                  [--set key=value ...] [--part test|val]
                                  [--paper [--paper-reference] [--paper-draws N]] [--timing]

For each config in configs/: train every model with the config's data, geometry and budget, evaluate on
the test split (CRPS, wQL, MASE, energy relative to seasonal naive by geometric mean; interval coverage);
--part val scores the validation split instead, which is where hyper-parameters are chosen.
--paper adds the HARMONY example code's protocol on fisher_containers (one step ahead, lookback 72/144/288,
70/10/20 split by rows, each container's 11 columns MinMax-scaled by their first 70% of rows, the models
trained and scored in that space on every training window, as the example code does; about 9 minutes per
lookback on one thread) and reports MSE
beside its published 0.0453/0.0458/0.0474, harmony's point forecast being the mean of --paper-draws
draws (default 1,000) per window (--paper-reference also trains our reproduction of the paper
code at its published size, 20-30 minutes per lookback on one thread; each lookback's seconds per model
are printed). --timing measures sampling 100
draws for one series on one core and the training time of the fisher config. Targets: docs/model.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from harmony.data.trace import Trace
from harmony.data.windows import Split
from harmony.training.config import TrainConfig, load_config
from harmony.training.evaluate import compare, format_summary
from harmony.training.train import torch_threads

ROOT = Path(__file__).resolve().parents[1]
PAPER_MSE = {72: 0.0453, 144: 0.0458, 288: 0.0474}


def minmax_ranges(trace: Trace, split: Split) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per container, each column's minimum and range over its training rows (range 1 for a constant
    column, as scikit-learn's MinMaxScaler does)."""
    out = {}
    for sid, frame in trace.series.items():
        train = frame.to_numpy(np.float64)[: split.boundaries[sid][0]]
        lo, hi = np.nanmin(train, axis=0), np.nanmax(train, axis=0)
        out[sid] = (lo, np.where(hi > lo, hi - lo, 1.0))
    return out


def minmax_trace(trace: Trace, split: Split) -> Trace:
    """Each container's columns mapped to [0, 1] by their range over the container's training rows: the
    example code scales its data so before training, and scores its MSE there."""
    scaled = {}
    for sid, (lo, span) in minmax_ranges(trace, split).items():
        frame = trace[sid]
        scaled[sid] = pd.DataFrame((frame.to_numpy(np.float64) - lo) / span, frame.index, frame.columns)
    return dataclasses.replace(trace, series=scaled)


def minmax_lower_bounds(trace: Trace, split: Split) -> dict[str, np.ndarray]:
    """Per container and column, where 0 (the physical bound of an indicator never negative in training)
    lands in its MinMax space, -lo / span; -inf for a column that goes negative. A model trained in that
    space learns one bound, 0, for every container: right for none of them once a test value falls below
    the training minimum (a container's memory dropping after a restart)."""
    return {
        sid: np.where(lo >= 0, -lo / span, -np.inf) for sid, (lo, span) in minmax_ranges(trace, split).items()
    }


def _lookbacks(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return values


def paper_protocol(
    overrides: list[str],
    with_reference: bool = False,
    lookbacks: tuple[int, ...] = (72, 144, 288),
    draws: int = 1000,
) -> None:
    """The HARMONY example code's own protocol on Fisher: one step ahead, 70/10/20 split by rows, every
    container's columns MinMax-scaled by their range over its first 70% of rows before training (as that
    code does), MSE in that space over its 11 columns and on `load`.
    `with_reference` also trains harmony_ref at its published size (d_model 512, every window, 10
    epochs): 20-30 minutes per lookback on one CPU thread. `draws` per window estimate harmony's
    predictive mean and median: the Monte Carlo error of a mean of n draws adds the predictive variance
    over n to its MSE, about 0.7% of the MSE at 100 draws."""
    print("\nfisher_containers, HARMONY example-code protocol (one step, MinMax space, 70/10/20 by rows)")
    print(
        f"point forecasts: harmony = mean / median of {draws} draws, bounded below by each container's\n"
        "image of 0; harmony_ref = its MSE-trained output (what the paper code's MSE scores);\n"
        "persistence = the last value. The 11th column, the constant memory limit, is forecast by\n"
        "persistence for every model (error 0)."
    )
    print(f"\n{'lookback':>8} {'model':>24} {'MSE all 11':>11} {'MSE load':>9} {'paper code':>11}")
    per_column: dict[str, dict[str, float]] = {}
    for lookback in lookbacks:
        cfg = load_config(
            ROOT / "configs" / "fisher_containers.yaml",
            [
                f"model.lookback={lookback}",
                "model.horizon=1",
                "model.lead_time=0",
                "model.targets=null",
                "data.split_by=rows",
                # Every training window each epoch, as the example code trains (the config subsamples).
                "model.hparams.max_train_windows=null",
                *overrides,
            ],
        )
        with torch_threads(cfg.trainer.num_threads):
            columns, errors, seconds = _paper_errors(cfg, with_reference=with_reference, draws=draws)
            threads = torch.get_num_threads()
        for model, e in errors.items():
            col = np.nanmean(e, axis=0)
            mse_all, mse_load = float(np.mean(col)), float(col[columns.index("load")])
            print(f"{lookback:>8} {model:>24} {mse_all:>11.4f} {mse_load:>9.4f} {PAPER_MSE[lookback]:>11}")
            if lookback == lookbacks[0]:
                per_column[model] = dict(zip(columns, col.tolist(), strict=True))
        took = ", ".join(f"{m} {t:.0f} s" for m, t in seconds.items())
        print(f"{lookback:>8} training and scoring on {threads} torch thread(s): {took}")
    print(f"\nlookback {lookbacks[0]}, MSE per column (MinMax space)")
    models = list(per_column)
    print(f"{'column':>26} " + " ".join(f"{m:>24}" for m in models))
    for c in per_column[models[0]]:
        print(f"{c:>26} " + " ".join(f"{per_column[m][c]:>24.4g}" for m in models))


def _paper_errors(
    cfg: TrainConfig, *, with_reference: bool, draws: int
) -> tuple[list[str], dict[str, np.ndarray], dict[str, float]]:
    """Train the paper protocol's models at `cfg`'s lookback; the 11 columns, per point forecast the
    squared errors [test windows of every container, 11] in MinMax space, and per model the seconds it
    took to train and forecast."""
    import harmony.model.registry  # noqa: F401  (registers every model)
    from harmony.data.windows import WindowDataset, WindowSpec, chronological_split
    from harmony.model.base import Forecaster, ForecastSpec
    from harmony.model.harmony_ref import HarmonyRefForecaster
    from harmony.model.neural import NeuralForecaster
    from harmony.training.train import load_data

    lookback = cfg.model.lookback
    _, raw, _, _ = load_data(cfg)
    split = chronological_split(raw, (0.7, 0.1, 0.2), by="rows")
    trace = minmax_trace(raw, split)
    columns = [s.name for s in trace.indicators]
    bounds = minmax_lower_bounds(raw, split)
    names = [c for c in columns if c != "memory_limit_bytes"]  # constant: not a forecasting target
    spec = ForecastSpec.for_trace(trace, lookback=lookback, horizon=1, lead_time=0, targets=names)
    target_cols = [columns.index(n) for n in spec.targets]
    seconds = {"harmony": 0.0, **({"harmony_ref": 0.0} if with_reference else {})}
    t0 = time.perf_counter()
    flow_model = Forecaster.registered()["harmony"](
        spec, **cfg.model.hparams, seed=cfg.trainer.seed, max_epochs=cfg.trainer.max_epochs
    )
    flow_model.fit(trace, split)
    assert isinstance(flow_model, NeuralForecaster)
    # The learned bound (0, the training minimum in MinMax space) is replaced by each container's own.
    flow_model.model.lower.fill_(float("-inf"))  # type: ignore[operator]
    seconds["harmony"] += time.perf_counter() - t0
    ref = HarmonyRefForecaster(spec, seed=cfg.trainer.seed) if with_reference else None
    if ref is not None:
        t0 = time.perf_counter()
        ref.fit(trace, split)
        seconds["harmony_ref"] += time.perf_counter() - t0
    errors: dict[str, list[np.ndarray]] = {}
    ds = WindowDataset(trace, split, "test", WindowSpec(lookback, 1), indicators=columns)
    for k, sid in enumerate(trace.series_ids):
        sel = np.flatnonzero(ds.index[:, 0] == k)
        hist_all = np.stack([ds[int(r)][0] for r in sel])  # [W, L, 11]
        y = np.stack([ds[int(r)][1][0] for r in sel])  # [W, 11]
        times = pd.DatetimeIndex(trace[sid].index).asi8[ds.index[sel, 1]]
        hist = hist_all[..., [columns.index(n) for n in spec.indicators]]
        last = hist_all[:, -1, :]
        lower = bounds[sid][target_cols]
        t0 = time.perf_counter()
        samples = np.maximum(flow_model.sample(hist, draws, times, seed=0)[:, :, 0], lower)  # [W, draws, 10]
        seconds["harmony"] += time.perf_counter() - t0
        points = {
            "harmony (mean)": samples.mean(axis=1),
            "harmony (median)": np.median(samples, axis=1),
            "persistence": last[:, target_cols],
        }
        if ref is not None:
            t0 = time.perf_counter()
            points["harmony_ref"] = np.maximum(ref.point(hist, times, seed=0)[:, 0], lower)
            seconds["harmony_ref"] += time.perf_counter() - t0
        for model, p in points.items():
            full = last.copy()
            full[:, target_cols] = p
            errors.setdefault(model, []).append((full - y) ** 2)
    return columns, {model: np.concatenate(errs) for model, errs in errors.items()}, seconds


def timing(overrides: list[str]) -> None:
    import harmony.model.registry  # noqa: F401
    from harmony.model.base import Forecaster
    from harmony.training.train import build_forecaster, load_data

    cfg = load_config(ROOT / "configs" / "fisher_containers.yaml", ["trainer.progress=false", *overrides])
    _, trace, split, spec = load_data(cfg)
    model = build_forecaster(cfg, spec)
    t0 = time.perf_counter()
    model.fit(trace, split)
    train_s = time.perf_counter() - t0
    assert isinstance(model, Forecaster)
    frame = trace[trace.series_ids[0]][list(spec.indicators)]
    hist = frame.to_numpy()[-spec.lookback :]
    torch.set_num_threads(1)
    model.sample(hist, 100, frame.index[-1], seed=0)  # warm-up
    runs = []
    for k in range(50):
        t = time.perf_counter()
        model.sample(hist, 100, frame.index[-1], seed=k)
        runs.append(time.perf_counter() - t)
    print(
        f"\nfisher config: training {train_s:.0f} s on {torch.get_num_threads()} thread(s) after fit; "
        f"100 draws for one series on one core: median {1000 * np.median(runs):.1f} ms, "
        f"p95 {1000 * np.quantile(runs, 0.95):.1f} ms (targets: 10 min, 20 ms)"
    )


def main() -> None:
    from harmony.output import quiet_third_party

    quiet_third_party()  # the same quiet output as the harmony command
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="fisher_containers,bitbrains_rnd,alibaba_gentd26")
    p.add_argument("--models", default="harmony,gaussian,flat,deepar,seasonal_naive,harmony_ref")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--part", choices=("test", "val"), default="test", help="split part to score on")
    p.add_argument("--paper", action="store_true", help="also run the example code's Fisher protocol")
    p.add_argument(
        "--paper-reference",
        action="store_true",
        help="with --paper, also train the paper code's model (harmony_ref) at its published size (slow)",
    )
    p.add_argument(
        "--paper-lookbacks",
        type=_lookbacks,
        default=(72, 144, 288),
        help="with --paper, the lookbacks to run (comma-separated; default 72,144,288)",
    )
    p.add_argument(
        "--paper-draws",
        type=int,
        default=1000,
        help="with --paper, harmony's draws per window for its mean and median (default 1000)",
    )
    p.add_argument("--timing", action="store_true", help="also time training and sampling")
    args = p.parse_args()
    overrides = ["trainer.progress=false", *args.set]
    for name in filter(None, args.configs.split(",")):
        cfg = load_config(ROOT / "configs" / f"{name}.yaml", overrides)
        with torch_threads(cfg.trainer.num_threads):
            print(
                f"\n=== {name}  (lookback {cfg.model.lookback}, horizon {cfg.model.horizon}, "
                f"lead {cfg.model.lead_time}, targets {cfg.model.targets}; {args.part} part; "
                f"{torch.get_num_threads()} torch thread(s))"
            )
            ev = compare(cfg, args.models.split(","), part=args.part)
        print(format_summary(ev))
    if args.paper:
        if args.paper_draws < 1:
            p.error(f"--paper-draws: expected an integer >= 1, got {args.paper_draws}")
        paper_protocol(
            args.set,
            with_reference=args.paper_reference,
            lookbacks=args.paper_lookbacks,
            draws=args.paper_draws,
        )
    if args.timing:
        timing(args.set)


if __name__ == "__main__":
    main()
