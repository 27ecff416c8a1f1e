"""Where training numbers go: metrics.jsonl (one object per logged step) and TensorBoard."""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax

# Dense bf16 peak FLOP/s per device, from the vendors' datasheets, for the MFU estimate.
PEAK_FLOPS = {
    "H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12,
    "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12,
    "TPU v6 lite": 918e12, "TPU v6e": 918e12,
}


def peak_flops_per_device(configured: float = 0.0) -> float:
    """The configured peak, else the datasheet value for this device kind, else 0 (unknown)."""
    if configured > 0:
        return configured
    kind = jax.devices()[0].device_kind
    for name, flops in PEAK_FLOPS.items():
        if name.lower() in kind.lower():
            return flops
    return 0.0


class MetricsWriter:
    """Appends JSON lines and TensorBoard scalars; only process 0 writes."""

    def __init__(self, run_dir: str | Path, resume_step: int = 0):
        self.enabled = jax.process_index() == 0
        self.path = Path(run_dir) / "metrics.jsonl"
        self.tb = None
        if not self.enabled:
            return
        if self.path.exists():  # drop lines logged after the restored checkpoint (or all of them)
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= resume_step]
            self.path.write_text("".join(line + "\n" for line in kept))
        from tensorboardX import SummaryWriter
        self.tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))

    def write(self, step: int, values: dict) -> None:
        if not self.enabled:
            return
        record = {"step": step, **{k: _plain(v) for k, v in values.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                self.tb.add_scalar(key, value, step)
        self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _plain(value):
    if hasattr(value, "item"):
        value = value.item()
    return value


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_loss_curve(run_dir: str | Path) -> Path | None:
    """Draws training and validation loss against tokens seen into run_dir/loss_curve.png
    (nothing for a run that logged no step, e.g. train.steps=0)."""
    if not (Path(run_dir) / "metrics.jsonl").is_file():
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(run_dir)
    train_points = [(r["tokens"], r["loss"]) for r in records if "loss" in r and "tokens" in r]
    val_points = [(r["tokens"], r["val_loss"]) for r in records if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for points, label, style in ((train_points, "train", "-"), (val_points, "validation", "o-")):
        if points:
            ax.plot(*zip(*points), style, label=label)
    ax.set_xlabel("training tokens")
    ax.set_ylabel("loss (nats per token)")
    ax.set_title(Path(run_dir).name)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = Path(run_dir) / "loss_curve.png"
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
