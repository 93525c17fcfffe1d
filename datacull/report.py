"""Tables and figures that show what a selection did: score distributions, class balance, examples."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from datacull.data.base import DataSource  # noqa: E402
from datacull.store import atomic_path  # noqa: E402


def class_balance(selection: pd.DataFrame, class_names: list[str] | None = None) -> pd.DataFrame:
    """Per class: examples before, kept after, and the kept share of the class."""
    table = selection.groupby("label").agg(before=("key", "size"), kept=("kept", "sum")).reset_index()
    table["kept_share"] = table["kept"] / table["before"]
    if class_names:
        table.insert(1, "class", [class_names[i] if 0 <= i < len(class_names) else str(i) for i in table["label"]])
    return table


def _save(fig, path: Path) -> Path:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


def plot_selection(selection: pd.DataFrame, metric: str, path: Path,
                   class_names: list[str] | None = None) -> Path:
    """Two panels: the score histogram split into kept / pruned, and the kept share per class."""
    fig, (hist_ax, class_ax) = plt.subplots(1, 2, figsize=(11, 3.8))
    scored = selection[selection["rank"] >= 0]
    bins = np.histogram_bin_edges(scored["score"], bins=60)
    hist_ax.hist(scored.loc[scored["kept"], "score"], bins=bins, alpha=0.75, label=f"kept ({int(scored['kept'].sum())})")
    hist_ax.hist(scored.loc[~scored["kept"], "score"], bins=bins, alpha=0.6,
                 label=f"pruned ({int((~scored['kept']).sum())})")
    hist_ax.set_xlabel(f"{metric} (higher = harder)")
    hist_ax.set_ylabel("examples")
    hist_ax.legend()
    hist_ax.set_title("score distribution")
    balance = class_balance(selection, class_names)
    names = balance["class"] if "class" in balance else balance["label"].astype(str)
    class_ax.bar(range(len(balance)), balance["kept_share"])
    class_ax.axhline(selection["kept"].mean(), color="k", lw=1, ls="--", label="overall")
    class_ax.set_xticks(range(len(balance)), names, rotation=45, ha="right", fontsize=8)
    class_ax.set_ylabel("kept share of class")
    class_ax.set_title("class balance after pruning")
    class_ax.legend()
    return _save(fig, path)


def plot_examples(source: DataSource, selection: pd.DataFrame, metric: str, path: Path, per_row: int = 10) -> Path:
    """Image grid: the hardest, median and easiest scored examples, each marked kept or pruned."""
    scored = selection[selection["rank"] >= 0].sort_values("rank")
    middle = max(0, len(scored) // 2 - per_row // 2)
    rows = [("hardest", scored.head(per_row)), ("median", scored.iloc[middle: middle + per_row]),
            ("easiest", scored.tail(per_row).iloc[::-1])]
    fig, axes = plt.subplots(len(rows), per_row, figsize=(1.3 * per_row, 1.55 * len(rows)), squeeze=False)
    for row, (title, frame) in enumerate(rows):
        for col in range(per_row):
            ax = axes[row][col]
            ax.axis("off")
            if col >= len(frame):
                continue
            item = frame.iloc[col]
            image = source.load(int(item["index"]))
            ax.imshow(image[..., 0] if image.shape[2] == 1 else image, cmap="gray")
            name = source.class_names[int(item["label"])] if source.class_names else str(item["label"])
            ax.set_title(f"{name[:10]}\n{'kept' if item['kept'] else 'pruned'}", fontsize=7,
                         color="tab:green" if item["kept"] else "tab:red")
        axes[row][0].text(-0.3, 0.5, title, transform=axes[row][0].transAxes, rotation=90, va="center", ha="right")
    fig.suptitle(f"examples by {metric}", fontsize=10)
    return _save(fig, path)
