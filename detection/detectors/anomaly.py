"""Anomaly model: flows unlike a network's baseline, per traffic class (scikit-learn IsolationForest).

``FlowAnomalyModel`` learns, for each traffic class (N3 user plane, N4 control,
SBI, enterprise), the distribution of scaled flow statistics and the score that
only ``target_fpr`` of the baseline's flows fall below; ``predict`` flags the
flows under their class's threshold and ``explain`` names the features furthest
from the baseline.  Features are flow statistics only: no addresses (they do
not generalise) and nothing from IP header lengths or options (the 5G-Attacks
dataset's labelling artefact).  ``AnomalyDetector`` runs a fitted model in the
streaming engine.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from detection.detectors.base import Estimator, FlowDetector

MODEL_FORMAT = "liaowang-flow-anomaly"
MODEL_VERSION = 1
FEATURES = ["bidirectional_packets", "bidirectional_bytes", "src2dst_packets", "dst2src_packets",
            "src2dst_bytes", "dst2src_bytes", "bidirectional_duration_ms", "src2dst_payload_bytes",
            "dst2src_payload_bytes"]
DERIVED = ["src2dst_mean_bytes", "dst2src_mean_bytes", "src2dst_byte_share", "packets_per_s"]
FEATURE_NAMES = FEATURES + DERIVED
CLASSES = ("n3_user_plane", "n4_control", "sbi", "enterprise")


class ModelError(Exception):
    """A model file that cannot be used (missing, not a Liaowang model, or another format version)."""


def traffic_class(flows: pa.Table) -> np.ndarray:
    """Each flow's traffic class, an index into CLASSES."""
    tunnel = pc.fill_null(flows.column("tunnel_type"), "").to_numpy(zero_copy_only=False)
    app = pc.fill_null(flows.column("application_hint"), "").to_numpy(zero_copy_only=False)
    out = np.full(flows.num_rows, 3, dtype=np.int64)
    out[app == "http2"] = 2
    out[np.isin(app, ["pfcp", "gtpc"])] = 1
    out[tunnel == "gtpu"] = 0
    return out


def flow_features(flows: pa.Table) -> np.ndarray:
    """(n, len(FEATURE_NAMES)) float64: log1p of the flow statistics and ratios."""
    cols = {f: np.nan_to_num(pc.fill_null(flows.column(f), 0).to_numpy(zero_copy_only=False).astype(np.float64))
            for f in FEATURES}
    derived = [
        cols["src2dst_bytes"] / np.maximum(cols["src2dst_packets"], 1),
        cols["dst2src_bytes"] / np.maximum(cols["dst2src_packets"], 1),
        cols["src2dst_bytes"] / np.maximum(cols["bidirectional_bytes"], 1),
        cols["bidirectional_packets"] / np.maximum(cols["bidirectional_duration_ms"] / 1000.0, 0.001),
    ]
    x = np.column_stack([cols[f] for f in FEATURES] + derived)
    x[:, :len(FEATURES)] = np.log1p(x[:, :len(FEATURES)])
    x[:, len(FEATURES) + 3] = np.log1p(x[:, len(FEATURES) + 3])
    x[:, len(FEATURES):len(FEATURES) + 2] = np.log1p(x[:, len(FEATURES):len(FEATURES) + 2])
    return x


class FlowAnomalyModel(Estimator):
    """Per-class StandardScaler + IsolationForest with a threshold calibrated on the baseline."""

    def __init__(self, n_estimators: int = 100, target_fpr: float = 0.001, min_class_flows: int = 50,
                 random_state: int = 0) -> None:
        self.n_estimators = n_estimators
        self.target_fpr = target_fpr
        self.min_class_flows = min_class_flows
        self.random_state = random_state

    def fit(self, flows: pa.Table) -> FlowAnomalyModel:
        from sklearn.ensemble import IsolationForest
        from sklearn.preprocessing import StandardScaler

        x, cls = flow_features(flows), traffic_class(flows)
        self.feature_names_ = list(FEATURE_NAMES)
        self.models_: dict[str, tuple[Any, Any, float, float]] = {}
        self.baseline_flows_: dict[str, int] = {}
        for i, name in enumerate(CLASSES):
            xi = x[cls == i]
            self.baseline_flows_[name] = len(xi)
            if len(xi) < self.min_class_flows:  # too little to learn what is normal: not judged
                continue
            scaler = StandardScaler().fit(xi)
            zi = scaler.transform(xi)
            forest = IsolationForest(n_estimators=self.n_estimators, random_state=self.random_state).fit(zi)
            # two tests share the false-positive budget: the forest's score, and how far any one
            # feature lies outside the baseline (the forest's score saturates for extreme points)
            score_limit = float(np.quantile(forest.score_samples(zi), self.target_fpr / 2))
            z_limit = float(np.quantile(np.abs(zi).max(axis=1), 1 - self.target_fpr / 2))
            self.models_[name] = (scaler, forest, score_limit, z_limit)
        return self

    def score_samples(self, flows: pa.Table) -> np.ndarray:
        """Margin to the class's thresholds, negative for anomalies; NaN where the class is not modelled.

        The smaller of: the IsolationForest score minus its limit, and the z-score limit minus
        the largest absolute z-score of the flow's features (both relative: 0 is the boundary).
        """
        self._check_fitted()
        x, cls = flow_features(flows), traffic_class(flows)
        out = np.full(len(x), np.nan)
        for i, name in enumerate(CLASSES):
            rows = np.flatnonzero(cls == i)
            if name in self.models_ and len(rows):
                scaler, forest, score_limit, z_limit = self.models_[name]
                z = scaler.transform(x[rows])
                out[rows] = np.minimum(forest.score_samples(z) - score_limit,
                                       (z_limit - np.abs(z).max(axis=1)) / max(z_limit, 1e-9))
        return out

    def predict(self, flows: pa.Table) -> np.ndarray:
        """True for flows scored below their class's calibrated threshold."""
        margin = self.score_samples(flows)
        return np.nan_to_num(margin, nan=1.0) < 0

    def explain(self, flows: pa.Table, top: int = 3) -> list[str]:
        """Per flow, the features furthest from the class baseline: "name z=+4.2, ..."."""
        self._check_fitted()
        x, cls = flow_features(flows), traffic_class(flows)
        out = [""] * len(x)
        for i, name in enumerate(CLASSES):
            rows = np.flatnonzero(cls == i)
            if name not in self.models_ or not len(rows):
                continue
            z = self.models_[name][0].transform(x[rows])
            order = np.argsort(-np.abs(z), axis=1)[:, :top]
            for r, row_order, zr in zip(rows, order, z):
                out[r] = ", ".join(f"{self.feature_names_[j]} z={zr[j]:+.1f}" for j in row_order)
        return out

    def save(self, path: Path) -> None:
        self._check_fitted()
        import sklearn

        meta = {"format": MODEL_FORMAT, "version": MODEL_VERSION, "sklearn": sklearn.__version__,
                "features": self.feature_names_, "classes": list(self.models_), "params": self.get_params(),
                "baseline_flows": self.baseline_flows_}
        with open(path, "wb") as f:
            pickle.dump({"meta": meta, "model": self}, f)

    @staticmethod
    def load(path: Path) -> FlowAnomalyModel:
        """Only load model files you trust: they are pickles."""
        try:
            with open(path, "rb") as f:
                blob = pickle.load(f)
        except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError) as exc:
            raise ModelError(f"{path}: cannot read model: {exc}") from None
        meta = blob.get("meta", {}) if isinstance(blob, dict) else {}
        if meta.get("format") != MODEL_FORMAT:
            raise ModelError(f"{path}: not a Liaowang anomaly model")
        if meta.get("version") != MODEL_VERSION or meta.get("features") != FEATURE_NAMES:
            raise ModelError(f"{path}: model format {meta.get('version')} with other features; retrain it "
                             f"with this version (liaowang train)")
        model: FlowAnomalyModel = blob["model"]
        return model

    def _check_fitted(self) -> None:
        if not hasattr(self, "models_"):
            raise ValueError("FlowAnomalyModel is not fitted: call fit() first")


class AnomalyDetector(FlowDetector):
    rule_id = "3f0b6a52-8d1e-4f5c-9a7b-2c4e6d8f0a13"
    title = "Anomalous flow (unlike the trained baseline of its traffic class)"
    description = "A flow whose statistics score below the anomaly model's calibrated threshold for its class."
    level = "medium"
    tags = ["liaowang.anomaly"]
    category = "Misc activity"
    columns: ClassVar[list[str]] = ["flow_id", "first_seen", "src_ip", "dst_ip", "tunnel_type",
                                    "application_hint", *FEATURES]
    group_by = ("src_ip", "dst_ip")

    def __init__(self, model: FlowAnomalyModel | None = None, window_s: float = 300.0) -> None:
        self.model = model
        self.window_s = window_s

    def evaluate(self, flows: pa.Table) -> np.ndarray:
        if self.model is None:
            return np.zeros(flows.num_rows, dtype=bool)
        return self.model.predict(flows)

    def explain(self, flows: pa.Table) -> list[str | None]:
        return list(self.model.explain(flows)) if self.model is not None else [None] * flows.num_rows
