"""What a run reports: JSON lines in ``OUTPUT/metrics.jsonl`` and TensorBoard when installed."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"


class MetricsLog:
    """Appends one JSON object per record to ``output_dir/metrics.jsonl`` (flushed at once,
    so a killed run keeps what it reported) and mirrors scalars to TensorBoard event files
    under ``output_dir/tensorboard`` when the ``tensorboard`` package is installed."""

    def __init__(self, output_dir: str | os.PathLike, tensorboard: bool = True) -> None:
        self.path = Path(output_dir) / METRICS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")
        self._writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard not installed: JSON lines only
                pass
            else:
                self._writer = SummaryWriter(str(Path(output_dir) / "tensorboard"))

    def write(self, iteration: int, values: dict[str, Any]) -> None:
        """Record ``values`` (numbers, or nested dicts of numbers) for ``iteration``."""
        record = {"iteration": iteration, "time": round(time.time(), 3), **values}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._writer is not None:
            for key, value in _flatten(values).items():
                self._writer.add_scalar(key, value, iteration)
            self._writer.flush()

    def close(self) -> None:
        self._file.close()
        if self._writer is not None:
            self._writer.close()


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, float]:
    flat: dict[str, float] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[name] = float(value)
    return flat


def read_metrics(output_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Every record of ``output_dir/metrics.jsonl`` (a torn last line is skipped)."""
    path = Path(output_dir) / METRICS_FILE
    records = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records
