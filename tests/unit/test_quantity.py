import pytest

from modelyard.quantity import format_size, parse_duration, parse_size


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (0, 0.0),
        (30, 30.0),
        (2.5, 2.5),
        ("0", 0.0),
        ("45", 45.0),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("250ms", 0.25),
        ("1.5h", 5400.0),
        ("-1", None),
        (-1, None),
        ("-5m", None),
    ],
)
def test_quantity_duration_ollama_forms(value: str | float, seconds: float | None) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["", "5 minutes", "m5", "1x", "nan", True])
def test_quantity_duration_rejects_garbage(value: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(value)


@pytest.mark.parametrize(
    ("value", "total", "expected"),
    [
        (1024, None, 1024),
        ("512MiB", None, 512 * 1024**2),
        ("8GB", None, 8 * 10**9),
        ("1.5GiB", None, int(1.5 * 1024**3)),
        ("75%", 1000, 750),
        ("100%", 1000, 1000),
    ],
)
def test_quantity_size_forms(value: str | int, total: int | None, expected: int) -> None:
    assert parse_size(value, total) == expected


@pytest.mark.parametrize(
    ("value", "total"), [("lots", None), ("50%", None), ("0%", 10), (-1, None)]
)
def test_quantity_size_rejects_garbage(value: str | int, total: int | None) -> None:
    with pytest.raises(ValueError, match=r"size|percentage"):
        parse_size(value, total)


def test_quantity_format_size() -> None:
    assert format_size(512) == "512 B"
    assert format_size(1536 * 1024**2) == "1.5 GiB"
