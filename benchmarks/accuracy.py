"""Forecast accuracy and calibration of every model on the real traces, side by side.

    python -m benchmarks.accuracy [--configs fisher_containers,bitbrains_rnd,alibaba_gentd26]
                                  [--models harmony,gaussian,flat,deepar,seasonal_naive,harmony_ref]
                                  [--set key=value ...] [--part test|val] [--paper] [--timing]

For each config in configs/: train every model with the config's data, geometry and budget, evaluate on
the test split (CRPS, wQL, MASE, energy relative to seasonal naive by geometric mean; interval coverage);
--part val scores the validation split instead, which is where hyper-parameters are chosen.
--paper adds the HARMONY example code's protocol on fisher_containers (one step ahead, lookback 72/144/288,
70/10/20 split by rows, MinMax scaling over all 11 columns fit on the first 70% of rows) and reports MSE
beside its published 0.0453/0.0458/0.0474. --timing measures sampling 100 draws for one series on one
core and the training time of the fisher config. Targets: docs/model.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from harmony.config import load_config
from harmony.evaluate import compare, format_summary

ROOT = Path(__file__).resolve().parents[1]
PAPER_MSE = {72: 0.0453, 144: 0.0458, 288: 0.0474}


def paper_protocol(overrides: list[str]) -> None:
    import harmony.model.registry  # noqa: F401
    from harmony.data.windows import WindowDataset, WindowSpec, chronological_split
    from harmony.model.base import Forecaster, ForecastSpec
    from harmony.train import load_data

    print("\nfisher_containers, HARMONY example-code protocol (one step, MinMax space, 70/10/20 by rows)")
    print(f"{'lookback':>8} {'model':>12} {'MSE all 11':>11} {'MSE load':>9} {'paper code':>11}")
    for lookback in (72, 144, 288):
        cfg = load_config(
            ROOT / "configs" / "fisher_containers.yaml",
            [
                f"model.lookback={lookback}",
                "model.horizon=1",
                "model.lead_time=0",
                "model.targets=null",
                "data.split_by=rows",
                *overrides,
            ],
        )
        _, trace, _, _ = load_data(cfg)
        split = chronological_split(trace, (0.7, 0.1, 0.2), by="rows")
        names = [s.name for s in trace.indicators if s.name != "memory_limit_bytes"]
        spec = ForecastSpec.for_trace(trace, lookback=lookback, horizon=1, lead_time=0, targets=names)
        for name in ("harmony", "harmony_ref"):
            hp = dict(cfg.model.hparams) if name == "harmony" else {}
            model = Forecaster.registered()[name](spec, **hp, max_epochs=cfg.trainer.max_epochs)
            model.fit(trace, split)
            errs, load_errs = [], []
            for sid in trace.series_ids:
                frame = trace[sid][list(spec.indicators)].to_numpy()
                a = split.boundaries[sid][0]
                lo, hi = np.nanmin(frame[:a], axis=0), np.nanmax(frame[:a], axis=0)
                span = np.where(hi > lo, hi - lo, 1.0)
                ds = WindowDataset(
                    trace, split, "test", WindowSpec(lookback, 1), indicators=list(spec.indicators)
                )
                rows = np.flatnonzero(ds.index[:, 0] == trace.series_ids.index(sid))
                hist = np.stack([ds[int(r)][0] for r in rows])
                y = np.stack([ds[int(r)][1][0, spec.target_index] for r in rows])
                times = trace[sid].index.asi8[ds.index[rows, 1]]
                mean = model.sample(hist, 100, times, seed=0).mean(axis=1)[:, 0]
                tspan, tlo = span[spec.target_index], lo[spec.target_index]
                e = (((mean - tlo) / tspan) - ((y - tlo) / tspan)) ** 2
                errs.append(e.mean())
                load_errs.append(e[:, 0].mean())
            print(
                f"{lookback:>8} {name:>12} {np.mean(errs):>11.4f} {np.mean(load_errs):>9.4f}"
                f" {PAPER_MSE[lookback]:>11}"
            )


def timing(overrides: list[str]) -> None:
    import harmony.model.registry  # noqa: F401
    from harmony.model.base import Forecaster
    from harmony.train import build_forecaster, load_data

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
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="fisher_containers,bitbrains_rnd,alibaba_gentd26")
    p.add_argument("--models", default="harmony,gaussian,flat,deepar,seasonal_naive,harmony_ref")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--part", choices=("test", "val"), default="test", help="split part to score on")
    p.add_argument("--paper", action="store_true", help="also run the example code's Fisher protocol")
    p.add_argument("--timing", action="store_true", help="also time training and sampling")
    args = p.parse_args()
    overrides = ["trainer.progress=false", *args.set]
    for name in filter(None, args.configs.split(",")):
        cfg = load_config(ROOT / "configs" / f"{name}.yaml", overrides)
        print(
            f"\n=== {name}  (lookback {cfg.model.lookback}, horizon {cfg.model.horizon}, "
            f"lead {cfg.model.lead_time}, targets {cfg.model.targets}; {args.part} part)"
        )
        ev = compare(cfg, args.models.split(","), part=args.part)
        print(format_summary(ev))
    if args.paper:
        paper_protocol(args.set)
    if args.timing:
        timing(args.set)


if __name__ == "__main__":
    main()
