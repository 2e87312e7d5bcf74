import pytest

from ponder.core.stats import largest_drop, spearman_or_none


def test_spearman_is_rank_based_and_undefined_when_constant():
    assert spearman_or_none([1, 2, 3, 4], [10, 20, 30, 1000]) == pytest.approx(1.0)
    assert spearman_or_none([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman_or_none([1, 2, 3], [5, 5, 5]) is None  # undefined, never 0
    assert spearman_or_none([1, 2], [1, 2]) is None  # too few points


def test_largest_drop_from_a_running_peak():
    assert largest_drop([0.2, 0.8, 0.5, 0.9, 0.6]) == pytest.approx((0.3, 0.9, 0.6))
    assert largest_drop([0.1, 0.2, 0.3]) == (0.0, 0.3, 0.3)
