import pytest

from modelyard.scheduler.policy import Loaded, choose_victims

NOW = 1000.0


def m(
    name: str,
    size: int = 100,
    *,
    busy: bool = False,
    pinned: bool = False,
    expires: float | None = 2000.0,
    used: float = 500.0,
    loaded: float = 0.0,
) -> Loaded:
    return Loaded(name, {"ram": size}, busy, pinned, expires, used, loaded)


def test_policy_evicts_nothing_when_it_fits() -> None:
    assert choose_victims({"ram": 100}, {"ram": 100}, [m("a")], NOW) == []


def test_policy_evicts_nearest_expiry_first() -> None:
    loaded = [m("late", expires=1900), m("soon", expires=1100), m("mid", expires=1500)]
    assert choose_victims({"ram": 100}, {"ram": 0}, loaded, NOW) == ["soon"]


def test_policy_never_expiring_goes_last() -> None:
    loaded = [m("forever", expires=None, used=1), m("timed", expires=5000, used=999)]
    assert choose_victims({"ram": 100}, {"ram": 0}, loaded, NOW) == ["timed"]


def test_policy_ties_broken_by_least_recently_used() -> None:
    loaded = [m("recent", expires=None, used=900), m("old", expires=None, used=100)]
    assert choose_victims({"ram": 100}, {"ram": 0}, loaded, NOW) == ["old"]


def test_policy_takes_as_many_as_needed_in_order() -> None:
    loaded = [m("a", 100, expires=1100), m("b", 100, expires=1200), m("c", 100, expires=1300)]
    assert choose_victims({"ram": 250}, {"ram": 50}, loaded, NOW) == ["a", "b"]


def test_policy_never_evicts_busy() -> None:
    loaded = [m("busy", busy=True, expires=1001), m("idle", expires=1999)]
    assert choose_victims({"ram": 100}, {"ram": 0}, loaded, NOW) == ["idle"]
    assert choose_victims({"ram": 100}, {"ram": 0}, [m("busy", busy=True)], NOW) is None


def test_policy_never_evicts_pinned() -> None:
    assert choose_victims({"ram": 100}, {"ram": 0}, [m("p", pinned=True)], NOW) is None


def test_policy_waits_when_all_idle_together_are_not_enough() -> None:
    loaded = [m("a", 100), m("b", 100, busy=True)]
    assert choose_victims({"ram": 200}, {"ram": 50}, loaded, NOW) is None


def test_policy_spares_freshly_loaded_models() -> None:
    loaded = [m("fresh", loaded=NOW - 1), m("settled", loaded=NOW - 60, expires=9999)]
    assert choose_victims({"ram": 100}, {"ram": 0}, loaded, NOW, min_residency=5) == ["settled"]
    assert choose_victims({"ram": 100}, {"ram": 0}, loaded[:1], NOW, min_residency=5) is None


def test_policy_skips_models_that_free_nothing_on_the_short_device() -> None:
    cpu_only = Loaded("cpu", {"ram": 500}, False, False, 1001, 1, 0)
    gpu = Loaded("gpu", {"gpu0": 500}, False, False, 1500, 1, 0)
    victims = choose_victims({"gpu0": 400}, {"gpu0": 100, "ram": 0}, [cpu_only, gpu], NOW)
    assert victims == ["gpu"]


@pytest.mark.parametrize("free", [{"ram": 0}, {}])
def test_policy_single_idle_model_is_evicted(free: dict[str, int]) -> None:
    assert choose_victims({"ram": 100}, free, [m("a")], NOW) == ["a"]
