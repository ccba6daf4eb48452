"""The uptime heatmap, decoded: every cell whose state is known has its colour in the PNG."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image
import pytest

from agent.coordinator.audit import DeviceFact, MessageFact, compute_report
from agent.coordinator.audit_plot import COLOURS, figure_size, shown_rows, write_plot

S, E, EPOCH = 1000, 12_000, 3
T0 = EPOCH * E


def pixel(png: Path, x: float, y: float) -> tuple[int, int, int]:
    image = matplotlib.image.imread(str(png))
    r, g, b = (round(float(v) * 255) for v in image[int(y), int(x)][:3])
    return r, g, b


def scripted(n_devices: int, up: dict[int, set[int]]):  # type: ignore[no-untyped-def]
    devices = [DeviceFact(f"dev{i:03d}", "o", "rpi4", T0 - S) for i in range(n_devices)]
    messages = [
        MessageFact(f"dev{i:03d}", "heartbeat", T0 + s * S + 100, True, None, None)
        for i, slots in up.items()
        for s in slots
    ]
    # The coordinator is down from the middle of slot 8 to the middle of slot 9.
    liveness = [(T0 - 10, T0 + 8 * S + 500), (T0 + 9 * S + 500, T0 + E + 10)]
    return compute_report(
        EPOCH, slot_ms=S, epoch_ms=E, devices=devices, messages=messages, liveness=liveness, challenges=[]
    )


@pytest.mark.integration  # renders a real PNG (a few seconds on a loaded machine)
def test_each_cell_has_the_colour_of_its_state(tmp_path: Path) -> None:
    report = scripted(3, {0: set(range(12)), 1: {0, 1, 2, 5}, 2: set()})
    assert [d.slots for d in report.devices] == ["UUUUUUUUXXUU", "UUUDDUDDXXDD", "DDDDDDDDXXDD"]
    png = tmp_path / "uptime.png"
    layout = write_plot(report, png)
    image = matplotlib.image.imread(str(png))
    assert image.shape[:2] == (layout.height, layout.width)
    assert layout.devices == ("dev000", "dev001", "dev002")
    for row, device in enumerate(report.devices):
        for col, state in enumerate(device.slots):
            x, y = layout.centres[row][col]
            got = pixel(png, x, y)
            assert all(abs(g - w) <= 3 for g, w in zip(got, COLOURS[state], strict=True)), (row, col, got)
    # Cells are wide enough to read: neighbouring centres are at least 10 px apart both ways.
    (x0, y0), (x1, _) = layout.centres[0][0], layout.centres[0][1]
    assert x1 - x0 >= 10 and layout.centres[1][0][1] - y0 >= 10


def test_many_devices_keep_the_lowest_uptime_rows_and_the_figure_stays_bounded() -> None:
    report = scripted(80, {i: set(range(i % 12)) for i in range(80)})
    rows, note = shown_rows(report, 20)
    assert len(rows) == 20 and note == " (the 20 of 80 devices with the lowest uptime)"
    shown = {d.dev for d in rows}
    worst_shown = max(d.uptime or 0.0 for d in rows)
    assert worst_shown <= min(d.uptime or 0.0 for d in report.devices if d.dev not in shown)
    assert shown_rows(report, 80) == (list(report.devices), "")
    assert figure_size(3, 12) == (7.0, 3.0)
    assert figure_size(1000, 1000) == (24.0, 30.0)
    assert figure_size(20, 60) == pytest.approx((14.3, 8.0))
