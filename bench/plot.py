"""`--plot FILE.png`: decode time per batch and peak memory per directory, side by side. Needs
matplotlib (the `plot` extra); without it, a one-line ExtraNotInstalledError before anything runs."""
from __future__ import annotations

from pathlib import Path

from tessera.runtime.errors import ExtraNotInstalledError


def require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ExtraNotInstalledError("--plot needs matplotlib: pip install 'tessera-ar[plot]'") from None


def write_plot(run: dict, path: Path) -> None:
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = run["rows"]
    labels = [f"{r['name']}\n{r['provider']}" for r in rows]
    batches = sorted({b for r in rows for b in (r.get("batches") or {})}, key=int)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / max(len(batches), 1)
    for j, b in enumerate(batches):
        xs = [i + (j - (len(batches) - 1) / 2) * width for i in range(len(rows))]
        med = [(r.get("batches") or {}).get(b, {}).get("median_ms", 0) for r in rows]
        p90 = [(r.get("batches") or {}).get(b, {}).get("p90_ms", 0) for r in rows]
        ax1.bar(xs, med, width, yerr=[[0] * len(rows), [p - m for p, m in zip(p90, med)]], label=f"batch {b} rows")
    ax1.set_ylabel("ms per token (median, whisker to p90)")
    ax1.set_title("decode")
    ax1.legend(fontsize=8)
    ax2.bar(range(len(rows)), [r.get("peak_rss_image_mib") or 0 for r in rows], 0.6, label="one image")
    ax2.plot(range(len(rows)), [r.get("peak_rss_load_mib") or 0 for r in rows], "k_", ms=20, label="after load")
    ax2.set_ylabel("peak RSS, MiB")
    ax2.set_title("memory")
    ax2.legend(fontsize=8)
    for ax in (ax1, ax2):
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels(labels, fontsize=7)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"tessera bench, {run['environment']['date']}" + (" (noisy machine)" if run.get("noisy") else ""),
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
