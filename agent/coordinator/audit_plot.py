"""The uptime heatmap: devices x slots in three colours (up, down, not counted), with a legend.

matplotlib's Agg canvas (no pyplot, no display; imported only when a plot is asked for).  Rows follow the report (sorted by
device); beyond ``max_rows`` devices the plot keeps the ``max_rows`` with the lowest uptime
(those are the ones to look at) and says so in its title.  The figure grows with the number
of rows and slots, within bounds, so a cell stays a readable size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agent.coordinator.audit import DOWN, NOT_COUNTED, UP, DeviceEpoch, EpochReport
from agent.errors import EdgeproofError

#: Cell colours (RGB 0-255): green up, red down, light grey not counted.
COLOURS: dict[str, tuple[int, int, int]] = {
    UP: (44, 160, 44),
    DOWN: (214, 39, 40),
    NOT_COUNTED: (200, 200, 200),
}
LABELS = {UP: "up (accepted heartbeat)", DOWN: "down (counted, no heartbeat)", NOT_COUNTED: "not counted"}
_INDEX = {UP: 0, DOWN: 1, NOT_COUNTED: 2}


def _rgb(state: str) -> tuple[float, float, float]:
    r, g, b = COLOURS[state]
    return (r / 255, g / 255, b / 255)


@dataclass(frozen=True)
class PlotLayout:
    """Where each drawn cell's centre landed in the PNG (pixels, origin top-left)."""

    width: int
    height: int
    devices: tuple[str, ...]
    #: centres[row][slot] = (x, y)
    centres: tuple[tuple[tuple[float, float], ...], ...]


def figure_size(rows: int, slots: int) -> tuple[float, float]:
    """Inches: grows with the slots and the rows, within 7-24 wide and 3-30 high."""
    return min(24.0, max(7.0, 3.5 + 0.18 * slots)), min(30.0, max(3.0, 2.0 + 0.3 * rows))


def shown_rows(report: EpochReport, max_rows: int) -> tuple[list[DeviceEpoch], str]:
    """The devices drawn (report order; the lowest uptime ones beyond ``max_rows``), and a title note."""
    devices = list(report.devices)
    if len(devices) <= max_rows:
        return devices, ""
    worst = sorted(devices, key=lambda d: (-1.0 if d.uptime is None else d.uptime, d.dev))[:max_rows]
    return worst, f" (the {max_rows} of {len(devices)} devices with the lowest uptime)"


def _label(d: DeviceEpoch) -> str:
    share = "n/a" if d.uptime is None else f"{d.uptime:.0%}"
    return f"{d.dev[:10]}  {d.up_slots}/{d.counted_slots} {share}"


def write_plot(report: EpochReport, path: Path, *, max_rows: int = 60, dpi: int = 100) -> PlotLayout:
    """Draw the report's heatmap into ``path`` (PNG); the cell layout, for checks."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    rows, note = shown_rows(report, max_rows)
    n_slots = report.epoch_ms // report.slot_ms
    grid = [[_INDEX[c] for c in d.slots] for d in rows] or [[_INDEX[NOT_COUNTED]] * n_slots]
    fig = Figure(figsize=figure_size(len(grid), n_slots), dpi=dpi, layout="constrained")
    canvas = FigureCanvasAgg(fig)  # Agg, whatever backend pyplot may have chosen
    ax = fig.add_subplot()
    cmap = ListedColormap([_rgb(k) for k in (UP, DOWN, NOT_COUNTED)])
    ax.imshow(grid, cmap=cmap, vmin=-0.5, vmax=2.5, aspect="auto", interpolation="nearest")
    ax.set_yticks(range(len(rows)), [_label(d) for d in rows], fontsize=8, family="monospace")
    step = max(1, n_slots // 20)
    first_slot = report.start_ms // report.slot_ms
    ax.set_xticks(range(0, n_slots, step), [str(first_slot + i) for i in range(0, n_slots, step)], fontsize=7)
    ax.tick_params(axis="x", labelrotation=45)
    # Thin white lines between cells, so single slots can be told apart.
    ax.set_xticks([i - 0.5 for i in range(1, n_slots)], minor=True)
    ax.set_yticks([i - 0.5 for i in range(1, len(grid))], minor=True)
    ax.grid(which="minor", color="white", linewidth=0.6)
    ax.tick_params(which="minor", length=0)
    ax.set_xlabel(f"slot ({report.slot_ms} ms each)")
    ax.set_title(
        f"uptime, epoch {report.epoch}: coordinator up {report.coordinator_up_slots}/{n_slots} slots{note}",
        fontsize=10,
    )
    ax.legend(
        handles=[Patch(color=_rgb(k), label=LABELS[k]) for k in (UP, DOWN, NOT_COUNTED)],
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize=8,
        frameon=False,
    )
    canvas.draw()  # type: ignore[no-untyped-call]  # lays the figure out: cell centres are final
    px_w, px_h = canvas.get_width_height()
    centres = tuple(
        tuple(
            (float(x), float(px_h - y))
            for x, y in (ax.transData.transform((col, row)) for col in range(n_slots))
        )
        for row in range(len(rows))
    )
    try:
        fig.savefig(path, dpi=dpi, format="png")
    except OSError as exc:
        raise EdgeproofError(f"cannot write the plot {path}: {exc}") from exc
    return PlotLayout(px_w, px_h, tuple(d.dev for d in rows), centres)
