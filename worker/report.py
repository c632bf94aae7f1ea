"""Pictures people would rather look at than read: the class-balance bar chart."""
from __future__ import annotations

import io


def class_balance_png(names: list[str], counts: list[int], title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(names) + 2), 3.6), dpi=100)
    bars = ax.bar(range(len(names)), counts, color="#3b75af")
    ax.set_xticks(range(len(names)), names)
    mean = sum(counts) / max(len(counts), 1)
    ax.axhline(mean, color="#c44e52", linewidth=1, linestyle="--", label=f"mean {mean:.0f}")
    ax.set_ylabel("images")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    for b, c in zip(bars, counts):
        if c == 0:
            b.set_color("#c44e52")
    fig.subplots_adjust(left=0.08, right=0.99, bottom=0.12, top=0.9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", pil_kwargs={"compress_level": 1})
    plt.close(fig)
    return buf.getvalue()
