"""The batching benchmark's report: percentiles and the side-by-side table."""

from __future__ import annotations

from loadtests.bench.batching import Point, _percentile, table


def test_percentile_picks_the_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert _percentile(values, 0.5) == 51.0  # round(0.5 * 99) = 50 -> the 51st value
    assert _percentile(values, 0.95) == 95.0
    assert _percentile([7.0], 0.95) == 7.0


def test_table_pairs_systems_and_gives_the_throughput_ratio() -> None:
    points = [
        Point("baseline", "translate", 16, 16, 0, 2.0, 8.0, 1900.0, 2000.0),
        Point("triton", "translate", 16, 16, 0, 0.5, 32.0, 400.0, 480.0),
        Point("triton", "stt", 4, 8, 1, 10.0, 0.8, 5000.0, 6000.0),  # no baseline: left out
    ]
    lines = table(points).splitlines()
    assert lines[2] == "| translate | 16 | 32.00 | 8.00 | 4.00x | 400 / 480 | 1900 / 2000 | 0, 0 |"
    assert len(lines) == 3
