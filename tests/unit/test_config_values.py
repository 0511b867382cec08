"""proxy/config_values.py: what setting values accept, and sizes as people read and write them."""

from __future__ import annotations

import pytest

from proxy.config_values import human_bytes, size, written_size

KiB, MiB, GiB = 1024, 1024**2, 1024**3


@pytest.mark.parametrize(
    ("count", "shown"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1 KiB"),
        (1536, "1.5 KiB"),
        (1234, "1.21 KiB"),
        (999 * KiB, "999 KiB"),
        (1023 * KiB, "1023 KiB"),
        (MiB - 1, "1 MiB"),  # rounds up to the next unit, never "1024 KiB"
        (12.3 * MiB, "12.3 MiB"),
        (3328 * MiB, "3.25 GiB"),
        (20 * GiB, "20 GiB"),
        (5000 * 1024 * GiB, "5000 TiB"),
        (None, "\u2013"),
    ],
)
def test_human_bytes_are_binary_units_to_three_figures(count: float | None, shown: str) -> None:
    assert human_bytes(count) == shown


@pytest.mark.parametrize(
    ("count", "written"),
    [(35 * GiB, "35GiB"), (3328 * MiB, "3328MiB"), (1536 * KiB, "1536KiB"), (1000, "1000")],
)
def test_a_written_size_is_exact_and_reads_back(count: int, written: str) -> None:
    assert written_size(count) == written
    assert size(written) == count


def test_every_written_size_reads_back() -> None:
    for count in (1, 1023, 1024, 4 * MiB, 4 * MiB + 1, 2 * GiB, 3 * GiB + 512 * MiB):
        assert size(written_size(count)) == count
