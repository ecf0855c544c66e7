"""The one place that formats result tables and draws figures (Agg backend: no screen needed)."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Sequence

from .io import atomic_path, atomic_write_text


def format_table(rows: Sequence[Sequence], headers: Sequence[str], markdown: bool = False) -> str:
    """A plain-text (or Markdown) table with columns padded to their widest cell."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    def line(r):
        body = " | ".join(c.ljust(w) for c, w in zip(r, widths))
        return f"| {body} |" if markdown else body
    sep = ("|-" + "-|-".join("-" * w for w in widths) + "-|") if markdown else "-+-".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), sep] + [line(r) for r in cells[1:]])


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    values = list(values)
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def fmt_mean_std(values: Sequence[float], scale: float = 100.0, digits: int = 2) -> str:
    m, s = mean_std([v * scale for v in values])
    return f"{m:.{digits}f} ± {s:.{digits}f}"


FIGURE_FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".pdf": "pdf", ".svg": "svg", ".webp": "webp"}


def figure_suffixes() -> tuple[str, ...]:
    """File suffixes a figure can be written as (``.webp`` only where Pillow has WebP support)."""
    from PIL import features

    return tuple(s for s, f in FIGURE_FORMATS.items() if f != "webp" or features.check("webp"))


def figure_format(path, what: str = "path") -> str:
    """The image format named by ``path``'s suffix; a :class:`ConfigError` naming ``what`` (the argument or
    option) and the allowed suffixes for an empty path or another suffix."""
    from .errors import ConfigError

    allowed = ", ".join(figure_suffixes())
    text = str(path)
    if not text.strip():
        raise ConfigError(f"{what} is empty; give a file name ending in one of: {allowed}")
    suffix = Path(text).suffix.lower()
    if suffix not in figure_suffixes():
        raise ConfigError(f"{what} '{text}' has {f'suffix {suffix!r}' if suffix else 'no suffix'}, which names no "
                          f"supported image format; allowed suffixes: {allowed}")
    return FIGURE_FORMATS[suffix]


def machine_description() -> str:
    """CPU model, core count, OS, torch and Python versions: the line every benchmark quotes."""
    import os
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return (f"{cpu}, {os.cpu_count()} cores{gpu}, {platform.system()} {platform.machine()}, "
            f"torch {torch.__version__}, Python {platform.python_version()}")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """Lay out, write atomically (format from the suffix, PNG by default) and close a figure."""
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=dpi)
    _pyplot().close(fig)
    return path


def _save_epoch_figure(fig, axes, path: str | Path, title: str) -> Path:
    """Whole epochs on every x axis, a grid and a legend per panel, the title; then the file."""
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def plot_curves(history: Sequence[dict], path: str | Path, title: str = "") -> Path:
    """Loss and accuracy per epoch (train and, when present, validation) side by side."""
    plt = _pyplot()
    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.4))
    ax_loss.plot(epochs, [r["train_loss"] for r in history], "o-", label="train (training loss)")
    ax_acc.plot(epochs, [100 * r["train_acc"] for r in history], "o-", label="train (running, in epoch)")
    if history and "val_loss" in history[0]:
        ax_loss.plot(epochs, [r["val_loss"] for r in history], "s-", label="val (cross-entropy)")
        ax_acc.plot(epochs, [100 * r["val_acc"] for r in history], "s-", label="val")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    return _save_epoch_figure(fig, (ax_loss, ax_acc), path, title)


def plot_history(history: Sequence[dict], path: str | Path, title: str = "") -> Path:
    """Every metric of a run's history per epoch, one panel per metric (train and validation together): the
    curves of a task that has no figure of its own."""
    plt = _pyplot()
    skip = ("per_s", "train_seconds")
    names = list(dict.fromkeys(k.split("_", 1)[1] for r in history for k, v in r.items()
                               if k.startswith(("train_", "val_")) and not k.endswith(skip)
                               and isinstance(v, (int, float)) and not isinstance(v, bool)))
    if not names:
        raise ValueError("the history holds no train_/val_ metric to plot")
    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        for prefix, style in (("train", "o-"), ("val", "s-")):
            pts = [(r["epoch"], r[f"{prefix}_{name}"]) for r in history
                   if isinstance(r.get(f"{prefix}_{name}"), (int, float))]
            if pts:
                ax.plot(*zip(*pts), style, label=prefix)
        ax.set(xlabel="epoch", title=name)
    return _save_epoch_figure(fig, axes[0], path, title)


def plot_variance_correctness(variance, correct, path: str | Path, title: str = "", bins: int = 10) -> Path:
    """Feature variance against correctness: histograms of log-variance for right and wrong predictions,
    and accuracy per variance decile (the low-diversity samples Bias Loss down-weights sit on the left)."""
    import numpy as np

    plt = _pyplot()
    variance = np.asarray(variance, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    finite = np.isfinite(variance) & (variance > 0)
    logv = np.log10(variance[finite])
    ok = correct[finite]
    fig, (ax_h, ax_a) = plt.subplots(1, 2, figsize=(9, 3.4))
    edges = np.linspace(logv.min(), logv.max(), 31) if logv.size else np.linspace(0, 1, 31)
    for group, label in ((ok, "correct"), (~ok, "wrong")):
        if group.any():  # a density of no sample is undefined: an empty group gets a legend entry only
            ax_h.hist(logv[group], bins=edges, alpha=0.6, label=f"{label} ({group.sum()})", density=True)
        else:
            ax_h.plot([], [], label=f"{label} (0)")
    ax_h.set(xlabel="log10 feature variance", ylabel="density", title="variance by outcome")
    ax_h.legend()
    if logv.size:
        cuts = np.quantile(logv, np.linspace(0, 1, bins + 1))
        which = np.clip(np.searchsorted(cuts, logv, side="right") - 1, 0, bins - 1)
        acc = [100 * ok[which == b].mean() if (which == b).any() else np.nan for b in range(bins)]
        ax_a.bar(np.arange(1, bins + 1), acc, color="tab:green")
    ax_a.set(xlabel="variance decile (1 = lowest)", ylabel="accuracy (%)", title="accuracy per variance decile")
    for ax in (ax_h, ax_a):
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def plot_stream(reports: Sequence[dict], path: str | Path, label: str, title: str = "") -> Path:
    """Streaming at a glance: the running probability of ``label`` (when it is among the reported top-k) and the
    resident memory against the frame index (the reports of ``leancnn.tasks.video.stream``)."""
    plt = _pyplot()
    frames = [r["frame"] for r in reports]
    prob = [dict(r["top"]).get(label, 0.0) for r in reports]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    a.plot(frames, prob, marker="o", ms=3)
    a.set(xlabel="frames seen", ylabel=f"P({label}) when top-1, else 0", ylim=(-0.02, 1.02), title="running top-1")
    b.plot(frames, [r["rss_mib"] for r in reports], marker="o", ms=3, label="process RSS")
    b.set(xlabel="frames seen", ylabel="MiB", title="memory")
    b.set_ylim(0, max(r["rss_mib"] for r in reports) * 1.15)
    b.legend(loc="lower right")
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def write_markdown(path: str | Path, title: str, sections: Sequence[tuple[str, str]]) -> Path:
    """A Markdown report: a title and (heading, body) sections."""
    text = f"# {title}\n\n" + "\n".join(f"## {h}\n\n{b.rstrip()}\n" for h, b in sections)
    return atomic_write_text(path, text)


def update_doc_section(path: str | Path, key: str, body: str, heading: str | None = None) -> Path:
    """Replace the text between ``<!-- BEGIN key -->`` and ``<!-- END key -->`` in a Markdown file (appending
    the block, under ``heading``, when it is not there yet), so benchmarks can rewrite their own section."""
    path = Path(path)
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    begin, end = f"<!-- BEGIN {key} -->", f"<!-- END {key} -->"
    block = f"{begin}\n{body.strip()}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + (f"## {heading}\n\n" if heading else "") + block + "\n"
    return atomic_write_text(path, text)
