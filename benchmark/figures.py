"""Figures a person looks at before and after running: sample grids and mask
galleries."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from benchmark.engine import ImageBank, SplitTensors
from benchmark.splits import CellSplits

SAMPLE_SPLITS = ("train", "id_test", "ood_test", "conflict_test")
SPLIT_TITLES = {
    "train": "train: own class's backgrounds",
    "id_test": "id_test: unseen digits, own backgrounds",
    "ood_test": "ood_test: unseen digits, unseen backgrounds",
    "conflict_test": "conflict_test: another class's backgrounds",
}


def first_of_each_class(labels: np.ndarray, per_class: int = 1) -> list[int]:
    """Positions of the first ``per_class`` images of each class 0..9, in class
    order."""
    rows = []
    for c in range(10):
        rows.extend(np.flatnonzero(labels == c)[:per_class].tolist())
    return rows


def background_class(cell: CellSplits, split: str, row: int) -> int | None:
    """Whose pool a background comes from (None for backgrounds outside every pool)."""
    s = cell[split]
    if s.background_source != "train":
        return None
    hits = np.argwhere(cell.pools == s.background_index[row])
    return int(hits[0, 0]) if len(hits) else None


def sample_grid(
    cell: CellSplits, bank: ImageBank, path: Path, per_class: int = 1
) -> Path:
    """Write a labelled grid: one row per split, one column per digit class."""
    columns = 10 * per_class
    fig, axes = plt.subplots(
        len(SAMPLE_SPLITS),
        columns,
        figsize=(columns * 1.05, len(SAMPLE_SPLITS) * 1.35 + 0.6),
    )
    for r, name in enumerate(SAMPLE_SPLITS):
        split = cell[name]
        rows = first_of_each_class(split.label, per_class)
        images = SplitTensors.of(split, bank).images(
            torch.as_tensor(rows, device=bank.device)
        )
        for c, (row, image) in enumerate(zip(rows, images.cpu())):
            ax = axes[r, c]
            ax.imshow(image.permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            owner = background_class(cell, name, row)
            caption = f"y={split.label[row]}" + (
                "" if owner is None else f" bg={owner}"
            )
            ax.set_title(caption, fontsize=7, pad=2)
            if c == 0:
                ax.set_ylabel(SPLIT_TITLES[name].split(":")[0], fontsize=8)
        axes[r, columns // 2].text(
            0, -0.45, SPLIT_TITLES[name], transform=axes[r, 0].transAxes, fontsize=8
        )
    fig.suptitle(
        f"{cell.protocol.key} · {cell.variant.name} digits"
        f" · class size {cell.class_size}"
        f" · seed {cell.seed} · fingerprint {cell.fingerprint}",
        fontsize=9,
    )
    # Fixed margins: tight_layout cannot fit the captions between rows.
    fig.subplots_adjust(left=0.06, right=0.99, top=0.88, bottom=0.08, hspace=0.75)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path


def mask_gallery(
    panels: list[tuple[str, torch.Tensor, torch.Tensor]], path: Path, title: str
) -> Path:
    """One row per trained masker: the OOD images once, then each row's masks.

    ``panels`` holds (row label, images [N, 3, 32, 32], masks [N, 1, 32, 32]);
    every row shows the same images, so rows differ only by the masker.
    """
    n = panels[0][1].shape[0]
    rows = len(panels) + 1
    fig, axes = plt.subplots(
        rows, n, figsize=(n * 1.0 + 1.2, rows * 1.05 + 0.5), squeeze=False
    )
    for c in range(n):
        axes[0, c].imshow(
            panels[0][1][c].permute(1, 2, 0).cpu().numpy(), interpolation="nearest"
        )
    axes[0, 0].set_ylabel("image", fontsize=7, rotation=0, ha="right", va="center")
    for r, (label, _, masks) in enumerate(panels, start=1):
        for c in range(n):
            axes[r, c].imshow(
                masks[c, 0].cpu().numpy(),
                cmap="gray",
                vmin=0,
                vmax=1,
                interpolation="nearest",
            )
        axes[r, 0].set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    # Place the title and the layout in inches from the top: as fractions of a
    # tall figure, suptitle's default position lands on the first row.
    height = fig.get_figheight()
    fig.suptitle(title, fontsize=9, y=1 - 0.08 / height, va="top")
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / height))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path
