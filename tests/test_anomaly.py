"""Anomaly model and stateful detectors: scikit-learn conventions, training, scoring, model files."""

from __future__ import annotations

import inspect
import pickle
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from console.cli import main
from detection.detectors import default_detectors
from detection.detectors.anomaly import AnomalyDetector, FlowAnomalyModel
from ingest.replay import replay
from sensors.generate.attacks import generated_attacks
from tests.conftest import capture_path

ESTIMATORS = [*default_detectors(), AnomalyDetector(), FlowAnomalyModel()]


@pytest.fixture(scope="module")
def baseline_flows(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    out = tmp_path_factory.mktemp("baseline")
    replay([str(capture_path("generated_mixed_10k.pcap"))], out, rules=[], processes=1)
    return pq.read_table(out / "flows.parquet")


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=lambda e: type(e).__name__)
def test_scikit_learn_conventions(estimator, baseline_flows) -> None:  # type: ignore[no-untyped-def]
    init = inspect.signature(type(estimator).__init__).parameters
    params = estimator.get_params()
    # every __init__ parameter is stored unchanged under its own name, with nothing learned in __init__
    assert set(params) == {p for p in init if p != "self"}
    assert all(params[p] is init[p].default for p in params)
    assert not [a for a in vars(estimator) if a.endswith("_")]
    before = dict(vars(estimator))
    fitted = estimator.fit(baseline_flows)
    assert fitted is estimator  # fit returns self
    learned = [a for a in vars(estimator) if a not in before]
    assert all(a.endswith("_") and not a.startswith("_") for a in learned)
    assert estimator.get_params() == params  # fit does not touch the parameters


def test_model_calibrates_to_the_target_false_positive_rate(baseline_flows) -> None:  # type: ignore[no-untyped-def]
    model = FlowAnomalyModel(target_fpr=0.01).fit(baseline_flows)
    flagged = model.predict(baseline_flows)
    judged = ~np.isnan(model.score_samples(baseline_flows))
    assert judged.sum() > 300
    assert 0.005 <= flagged[judged].mean() <= 0.025  # about 1% of the baseline, by construction
    explained = [e for e, f in zip(model.explain(baseline_flows), flagged) if f]
    assert explained and all(e.count("z=") == 3 for e in explained)


def test_train_then_replay_flags_the_unusual_flow(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "model.pkl"
    assert main(["train", "--baseline", str(capture_path("generated_mixed_10k.pcap")), "--model", str(model)]) == 0
    assert "baseline flows" in capsys.readouterr().out
    upload = generated_attacks(tmp_path)["large_transfer"]  # a 21 MB one-way upload: nothing like the baseline
    assert main(["replay", str(upload), "--out", str(tmp_path / "o"), "--model", str(model), "-q",
                 "--processes", "1"]) == 0
    alerts = pq.read_table(tmp_path / "o" / "alerts.parquet").to_pylist()
    anomaly = [a for a in alerts if a["detector"] == "AnomalyDetector"]
    assert len(anomaly) == 1 and anomaly[0]["src_ip"] == "10.0.0.40"
    assert "src2dst" in anomaly[0]["detail"]


def test_a_bad_model_file_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(pickle.dumps({"meta": {"format": "something-else"}}))
    junk = tmp_path / "junk.pkl"
    junk.write_bytes(b"not a pickle")
    for path, words in ((bad, "not a Liaowang anomaly model"), (junk, "cannot read model"),
                        (tmp_path / "missing.pkl", "cannot read model")):
        code = main(["replay", str(capture_path("generated_mixed_10k.pcap")), "--out", str(tmp_path / "o"),
                     "--model", str(path), "-q"])
        err = capsys.readouterr().err.strip()
        assert code == 2 and words in err and "\n" not in err
    assert not (tmp_path / "o").exists()  # nothing written before the model was usable
