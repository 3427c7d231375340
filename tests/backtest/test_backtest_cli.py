"""`harmony backtest` end to end (a real MLflow SQLite store, the HTML report, the printed tables against the
logged metrics) and configuration errors that name the file and the key."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from backtest_helpers import CAPACITIES, SERIES
from mlflow import MlflowClient

from harmony.backtest import POLICY_ORDER, PoliciesConfig, load_backtest_config, run_config
from harmony.cli import main
from harmony.training.config import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def _number(text: str) -> float:
    return math.nan if text == "-" else float(text)


def _table(text: str, title: str) -> list[list[str]]:
    """The rows of the printed table that follows the line starting with `title`."""
    lines = text[text.index(title) :].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("---"))
    rows = []
    for line in lines[start + 1 :]:
        if not line.strip() or line.split()[0] not in POLICY_ORDER:
            break
        rows.append(line)
    return [re.split(r"\s{2,}", r.strip()) for r in rows]


def test_cli_end_to_end(tmp_path: Path, data_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "base": str(ROOT / "configs" / "fisher_containers.yaml"),
                "data": {"series": SERIES},
                "model": {
                    "name": "seasonal_naive",
                    "lookback": 24,
                    "horizon": 3,
                    "targets": ["load"],
                    "hparams": {},
                },
                "trainer": {"progress": False, "num_threads": 1},
                "evaluation": {"num_samples": 10, "max_windows_per_series": 4},
                "forecaster": {"origin": "train", "num_samples": 50},
                "backtest": {"max_steps": 120, "capacities": CAPACITIES},
                "cost": {"violation_penalty": 1.0},
                "policies": {
                    "harmony": {"max_violation_probability": [0.1, 0.02, 0.005]},
                    "quantile": {"max_violation_probability": [0.05, 0.01]},
                    "point": {"margin": [0.0, 0.5, 1.0]},
                    "ehpa": {"target_utilization": [0.5, 0.7], "scale_down_window_s": [0, 1800]},
                    "arima": {"margin": [0.0, 0.5, 1.0], "history": 288, "refit_every": 144},
                    "ets": {"margin": [0.0, 0.5, 1.0], "history": 288, "refit_every": 144},
                    "hpa": {"target_utilization": [0.5, 0.7, 0.9], "scale_down_window_s": [0, 600, 1800]},
                    "static": None,
                },
                "tuning": {"refine": 1},
                "report": {"experiment": "bt-test", "plot_series": "container2"},
            }
        )
    )
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": uri,
        "HARMONY_DATA_DIR": str(data_root),
        "HARMONY_PROGRESS_SECONDS": "0",  # a progress line per replayed setting
    }
    argv = [sys.executable, "-m", "harmony.cli", "backtest", "--config", str(config)]
    out = subprocess.run(
        [*argv, "--set", "sla.max_violation_probability=0.02"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    folder = tmp_path / "runs" / "backtest" / "tiny"
    html = (folder / "report.html").read_text()
    assert f"report     {folder / 'report.html'}" in text
    assert html.count("data:image/png;base64,") == 2
    assert "http://" not in html and "https://" not in html  # self-contained: nothing fetched
    assert "How to read this report" in html and "max_violation_probability: 0.02" in html
    for png in ("cost_vs_violation.png", "capacity.png"):
        assert (folder / "plots" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for csv in ("validated", "per_service", "hindsight", "summary", "per_run", "validation_summary"):
        assert (folder / "tables" / f"{csv}.csv").exists()
    # The command ends with the validated tables, the report, the run and the `mlflow ui` command; every
    # table is in summary.txt, the validated one first, the hindsight one after it, labelled so.
    summary = (folder / "summary.txt").read_text()
    assert 0 <= summary.index("VALIDATED:") < summary.index("VALIDATED, every service")
    assert summary.index("VALIDATED, every service") < summary.index("HINDSIGHT (not a result")
    assert "VALIDATED:" in text and "HINDSIGHT" not in text
    assert f"all tables {folder / 'summary.txt'}" in text
    assert text.rstrip().splitlines()[-1] == f"browse     mlflow ui --backend-store-uri {uri}"
    # Progress lines with an ETA while the knobs are searched, and no third-party chatter.
    assert re.search(r"^validation: settings replayed: 1/\d+ \(\d+%\), \d+s elapsed, ETA at most", text, re.M)
    assert re.search(r"^test: settings replayed: \d+/\d+ \(\d+%\)", text, re.M)
    for noise in ("Tip:", "GPU available", "TPU available", "INFO", "Downloading artifacts", "Warning"):
        assert noise not in text + out.stderr, noise

    run_id = re.search(r"^run\s+([0-9a-f]{32})", text, re.M)
    assert run_id, text
    client = MlflowClient(uri)
    run = client.get_run(run_id.group(1))
    assert run.info.status == "FINISHED"
    assert run.data.params["policies.hpa.target_utilization"] == "0.5,0.7,0.9"
    assert run.data.tags["harmony.kind"] == "backtest" and "harmony.model_run_id" in run.data.tags
    metrics = run.data.metrics
    artifacts = {f.path for f in client.list_artifacts(run.info.run_id)}
    for criterion in ("total", "service"):  # the services no policy could have held are among those below
        held = {
            k: metrics[f"held/{criterion}/harmony/{k}"] for k in ("below", "inside", "above", "floor_bound")
        }
        assert 0 <= held["floor_bound"] <= held["below"]
    assert {"report.html", "summary.txt", "plots", "tables"} <= artifacts

    # The printed validated tables are the run's metrics, and their knobs its params.
    for criterion, title in (("total", "VALIDATED:"), ("service", "VALIDATED, every service")):
        rows = _table(text, title)
        assert [r[0] for r in rows] == [
            "harmony",
            "quantile",
            "point",
            "ehpa",
            "arima",
            "ets",
            "hpa",
            "oracle",
        ]
        for policy, knobs, val, val_worst, viol, worst, cost, vs_best, vs_hpa, vs_oracle, gap in rows:
            key = f"validated/{criterion}/{policy}"
            for printed, name, scale in (
                (val, "val_violation_rate", 100.0),
                (val_worst, "val_worst_violation_rate", 100.0),
                (viol, "violation_rate", 100.0),
                (worst, "worst_violation_rate", 100.0),
                (cost, "cost", 1.0),
                (vs_best, "cost_rel_best", 1.0),
                (vs_hpa, "cost_rel_hpa", 1.0),
                (vs_oracle, "cost_rel_oracle", 1.0),
                (gap, "gap_captured", 1.0),
            ):
                if printed == "-":
                    assert f"{key}/{name}" not in metrics
                else:
                    assert metrics[f"{key}/{name}"] * scale == pytest.approx(
                        _number(printed), rel=5e-3, abs=1e-3
                    ), (key, name)
            chosen = run.data.params[f"chosen.{criterion}.{policy}"]
            if policy != "oracle":
                primary = knobs.split()[0].replace("target=", "target_utilization=")
                assert chosen.startswith(primary), (chosen, knobs)
            if policy == "hpa":
                assert "down_window=" in knobs and "scale_down_window_s=" in chosen  # the window was searched
        block = text[text.index(title) :].split("\n\n")[0].splitlines()
        (headline,) = [line for line in block if line.startswith("HARMONY captures ")]
        assert metrics[f"headline/{criterion}/gap_captured"] == pytest.approx(
            float(headline.split()[2]), rel=5e-3, abs=1e-3
        )
    assert metrics["bound/total"] <= metrics["bound/service"]

    # The model the run trained, loaded back as its MLflow pyfunc model and as the saved folder, replays to
    # the very same numbers (same draws under the same seeds).
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    pyfunc = client.get_run(run.data.tags["harmony.model_run_id"]).data.tags["harmony.pyfunc_model_uri"]
    for origin in (
        ["forecaster.origin=mlflow", f"forecaster.uri={pyfunc}"],
        ["forecaster.origin=path", f"forecaster.path={folder / 'model' / 'forecaster'}"],
    ):
        again = run_config(load_backtest_config(config, ["sla.max_violation_probability=0.02", *origin]))
        for r in again.result.validated.to_dict("records"):
            key = f"validated/{r['criterion']}/{r['policy']}/cost"
            assert r["cost"] == pytest.approx(metrics[key], rel=1e-12), (origin, key)


# --- configuration errors -----------------------------------------------------------------------------------


def _write(tmp_path: Path, body: dict[str, object], name: str = "bt.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"base": str(ROOT / "configs" / "fisher_containers.yaml"), **body}))
    return path


@pytest.mark.parametrize(
    ("body", "sets", "expected"),
    [
        (
            {"policies": {"hpa": {"target_utilization": [0.5, 1.5]}}},
            [],
            r"policies\.hpa\.target_utilization\[1\]: expected a utilisation in \(0, 1\], got 1\.5",
        ),
        ({"backtest": {"lead": 2}}, [], r"backtest\.lead: unknown key; .* did you mean 'lead_time'"),
        ({"polices": {}}, [], r"polices: unknown section; .* did you mean 'policies'"),
        (
            {"sla": {"max_violation_probability": 2}},
            [],
            r"sla\.max_violation_probability: expected a rate in \(0, 0\.5\]",
        ),
        (
            {"cost": {"replica_hour_price": "cheap"}},
            [],
            r"cost\.replica_hour_price: expected a number, got 'cheap' \(str\)",
        ),
        (
            {"policies": {"hpa": {"target_utilisation": [0.5]}}},
            [],
            r"policies\.hpa\.target_utilisation: unknown key; .*did you mean 'target_utilization'",
        ),
        ({"policies": {"autoscaler": {}}}, [], r"policies\.autoscaler: unknown policy"),
        (
            {"forecaster": {"origin": "path"}},
            [],
            r"forecaster\.path: origin 'path' needs the forecaster folder",
        ),
        ({"forecaster": {"origin": "none"}}, [], r"policies\.harmony: needs the forecaster's draws"),
        (
            {"model": {"targets": ["cpu_cores"]}},
            [],
            r"model\.targets: the demand indicators \['load'\] must be forecast",
        ),
        ({"backtest": {"capacities": {"lod": 1.0}}}, [], r"backtest\.capacities\.lod: unknown indicator"),
        (
            {"backtest": {"lead_time": 0}},
            [],
            r"backtest\.lead_time: 0 is shorter than the model's lead time \(1\)",
        ),
        ({"backtest": {"part": "val"}}, [], r"backtest\.part: unknown key"),
        (
            {"policies": {"hpa": {"scale_down_window_s": [0, 300]}}},
            [],
            r"policies\.hpa\.scale_down_window_s\[1\]: 300 s is shorter than one decision interval \(600 s: "
            r"the trace's 600-s step x backtest\.interval 1\), so it has no effect",
        ),
        (
            {"scaling": {"scale_down_stabilization_s": 300}},
            [],
            r"scaling\.scale_down_stabilization_s: 300 s is shorter than one decision interval",
        ),
        (
            {"policies": {"ehpa": {"scale_down_rate": ["10 per minute"]}}},
            [],
            r"policies\.ehpa\.scale_down_rate\[0\]: rate rule '10 per minute': expected VALUE%/PERIODs",
        ),
        (
            {"policies": {"arima": {"season_length": 144}}},
            [],
            r"policies\.arima\.season_length: a seasonal AutoARIMA takes minutes per fit beyond 24 steps, got "
            r"144; use ets",
        ),
        ({"tuning": {"passes": 0}}, [], r"tuning\.passes: expected an integer >= 1, got 0"),
        (
            {"policies": {"harmony": {"window_steps": [6, 0]}}},
            [],
            r"policies\.harmony\.window_steps\[1\]: expected a whole number of forecast steps >= 1, got 0",
        ),
        (
            {"policies": {"quantile": {"window_steps": [1, 7]}}},
            [],
            r"policies\.quantile\.window_steps: \[7\] longer than the 6 forecast steps a decision's draws have",
        ),
        (
            {"scaling": {"fallback_on_miscalibration": "no"}},
            [],
            r"scaling\.fallback_on_miscalibration: expected true or false, got 'no' \(str\)",
        ),
        (
            {},
            ["scaling.max_replicas=0"],
            r"scaling\.max_replicas: expected .* \(from --set scaling\.max_replicas=0\)",
        ),
        (
            {},
            ["model.lookback=1"],
            r"model\.lookback: expected an integer >= 2, got 1 \(from --set model\.lookback=1\)",
        ),
    ],
)
def test_bad_config_names_file_and_key(
    tmp_path: Path, body: dict[str, object], sets: list[str], expected: str
) -> None:
    path = _write(tmp_path, body)
    with pytest.raises(ConfigError) as info:
        load_backtest_config(path, sets)
    assert str(info.value).startswith(f"{path}: "), str(info.value)
    assert re.search(expected, str(info.value)), str(info.value)


def test_a_bad_base_is_named_and_the_cli_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = tmp_path / "train.yaml"
    raw = yaml.safe_load((ROOT / "configs" / "fisher_containers.yaml").read_text())
    raw["model"]["lookbak"] = 10
    base.write_text(yaml.safe_dump(raw))
    path = tmp_path / "bt.yaml"
    path.write_text(yaml.safe_dump({"base": "train.yaml"}))  # relative to the backtest file
    assert main(["backtest", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{base}: model.lookbak: unknown key" in err and "did you mean 'lookback'" in err


# The demo searches shorter lists with a committed forecaster (tests/backtest/test_demo.py checks it).
SHIPPED = sorted(p for p in (ROOT / "configs" / "backtest").glob("*.yaml") if p.stem != "demo")


@pytest.mark.parametrize("config", SHIPPED, ids=lambda p: p.stem)
def test_shipped_configs_are_valid(config: Path) -> None:
    cfg = load_backtest_config(config)
    assert cfg.run_name == config.stem and cfg.forecaster.origin == "train"
    assert set(cfg.policies.enabled()) == set(POLICY_ORDER)
    assert cfg.sla.max_violation_probability == 0.01
    assert isinstance(cfg.policies, PoliciesConfig)
    # Every baseline gets a search as wide as HARMONY's: the HPA's windows and tolerance among its knobs.
    hpa = cfg.policies.hpa
    assert hpa is not None and len(hpa.target_utilization) >= 6
    assert hpa.scale_down_window_s is not None and len(hpa.scale_down_window_s) >= 3
    assert 3000 < max(hpa.scale_down_window_s) <= 3600 and len(hpa.tolerance) >= 2  # up to the HPA limit


def test_a_backtest_config_as_base_lends_all_but_its_run(tmp_path: Path) -> None:
    """A variant names another backtest config as its base: every section carries over key by key, its own
    keys win, and the base's run name and folder do not (the variant must not write over its results)."""
    base = _write(
        tmp_path,
        {
            "backtest": {"lead_time": 1, "interval": 1},
            "policies": {"point": {"margin": [0, 1]}},
            "report": {"run_name": "first", "output_dir": str(tmp_path / "first")},
        },
        "first.yaml",
    )
    variant = tmp_path / "variant.yaml"
    variant.write_text(
        yaml.safe_dump(
            {
                "base": base.name,  # relative to the variant's folder
                "forecaster": {"model_dir": str(tmp_path / "first" / "model")},
                "backtest": {"lead_time": 3},
            }
        )
    )
    cfg = load_backtest_config(variant)
    assert cfg.base == base
    assert cfg.backtest.lead_time == 3 and cfg.backtest.interval == 1
    assert cfg.policies.point is not None and cfg.policies.point.margin == [0, 1]
    assert cfg.train.model.lookback == 144  # from the training config at the bottom of the chain
    assert cfg.run_name == "variant" and cfg.output_dir == Path("runs/backtest/variant")
    assert cfg.forecaster.model_dir == str(tmp_path / "first" / "model")


def test_a_cycle_of_bases_and_a_bad_base_are_named(tmp_path: Path) -> None:
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(yaml.safe_dump({"base": "b.yaml", "backtest": {"interval": 1}}))
    b.write_text(yaml.safe_dump({"base": "a.yaml", "backtest": {"interval": 1}}))
    with pytest.raises(ConfigError, match=r"base: a\.yaml leads back to this file \(a cycle of bases\)"):
        load_backtest_config(a)
    bad = _write(tmp_path, {"backtest": {"lead": 2}}, "bad.yaml")
    c = tmp_path / "c.yaml"
    c.write_text(yaml.safe_dump({"base": "bad.yaml"}))
    with pytest.raises(ConfigError) as info:
        load_backtest_config(c)
    assert str(info.value).startswith(f"{bad}: backtest.lead: unknown key"), str(info.value)


def test_model_dir_needs_origin_train(tmp_path: Path) -> None:
    path = _write(tmp_path, {"forecaster": {"origin": "path", "path": "x", "model_dir": "m"}})
    with pytest.raises(ConfigError, match=r"forecaster\.model_dir: expected a folder for the trained model"):
        load_backtest_config(path)


def test_the_gpu_cold_start_variants_share_the_base_model() -> None:
    folder = ROOT / "configs" / "backtest"
    base = load_backtest_config(folder / "alibaba_gentd26.yaml")
    for minutes in (3, 5):
        cfg = load_backtest_config(folder / f"alibaba_gentd26_lead{minutes}.yaml")
        # 57-s steps: the lead time is the cold start rounded to whole steps.
        assert cfg.backtest.lead_time == minutes
        assert cfg.forecaster.model_dir == str(base.output_dir / "model")
        assert cfg.train == base.train and cfg.policies == base.policies


def test_each_file_of_a_chain_of_bases_is_read_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import harmony.backtest.config as config_module

    reads: list[Path] = []
    real = config_module.read_yaml

    def counting(path: Path) -> dict[str, object]:
        reads.append(Path(path).resolve())
        return real(path)

    monkeypatch.setattr(config_module, "read_yaml", counting)
    cfg = load_backtest_config(ROOT / "configs" / "backtest" / "alibaba_gentd26_lead3.yaml")
    # The variant, its backtest base and that one's training base: each read once, and each checked.
    assert sorted(reads) == sorted(
        {
            (ROOT / "configs" / "backtest" / "alibaba_gentd26_lead3.yaml").resolve(),
            (ROOT / "configs" / "backtest" / "alibaba_gentd26.yaml").resolve(),
            (ROOT / "configs" / "alibaba_gentd26.yaml").resolve(),
        }
    )
    assert (
        cfg.base is not None
        and cfg.base.resolve() == (ROOT / "configs/backtest/alibaba_gentd26.yaml").resolve()
    )
