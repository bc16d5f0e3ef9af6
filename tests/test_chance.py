"""The statistics written out in chance.py: they agree with scipy.stats, which the run no longer
imports, and the lockstep null reads the run's own lifetimes."""

import numpy as np
import pytest
from scipy.stats import binom, mannwhitneyu

from linkage.chance import _log_binomial_tails, mann_whitney_less


def _cases():
    rng = np.random.default_rng(7)
    for trial in range(400):
        n1 = int(rng.integers(1, 14))
        n2 = int(rng.integers(1, 1_500 if trial % 10 == 0 else 60))
        if trial % 2:  # distinct values: the exact distribution where a sample has at most 8
            yield rng.random(n1), rng.random(n2) + rng.uniform(-0.5, 0.5)
        else:  # ties: the normal approximation with the tie correction
            yield rng.integers(0, 5, n1).astype(float), rng.integers(0, 6, n2).astype(float)


def test_mann_whitney_matches_scipy_on_exact_and_asymptotic_cases():
    for x, y in _cases():
        expected = float(mannwhitneyu(x, y, alternative="less").pvalue)
        assert mann_whitney_less(x, y) == pytest.approx(expected, rel=1e-9, abs=1e-300)


@pytest.mark.parametrize(
    ("x", "y", "p"),
    [
        ([1.0], [2.0], 0.5),  # one arrangement of two: either order
        ([2.0], [1.0], 1.0),
        ([1.0, 1.0], [1.0, 1.0], 1.0),  # all tied: nothing to tell apart
        ([1.0, 2.0, 3.0], [4.0, 5.0, 6.0], 0.05),  # the lowest of C(6, 3) = 20 arrangements
    ],
)
def test_mann_whitney_boundaries(x, y, p):
    assert mann_whitney_less(np.array(x), np.array(y)) == p


def test_binomial_tails_are_scipys_bit_for_bit():
    width, grid = 32, 64
    jaccard = np.linspace(0.0, 1.0, grid + 1)
    with np.errstate(divide="ignore"):
        expected = np.log(np.stack([binom.sf(x - 1, width, jaccard) for x in range(width + 1)]))
    np.testing.assert_array_equal(_log_binomial_tails(width, grid), expected)


def test_lockstep_by_class_is_the_sum_per_pair_bit_for_bit():
    """Pairs grouped into classes (equal agreement and window counts) get exactly what each pair
    gets alone, whichever pair stands for its class and however much each pair needs."""
    from linkage.chance import _class_representatives, lockstep_surprisal

    rng = np.random.default_rng(5)
    n = 4_000
    agree = rng.integers(1, 17, 8)[rng.integers(0, 8, n)]
    windows_a = rng.integers(1, 300, 6).astype(float)[rng.integers(0, 6, n)]
    windows_b = rng.integers(1, 300, 6).astype(float)[rng.integers(0, 6, n)]
    needed = rng.uniform(0, 30, n)
    classes = agree | (windows_a.astype(np.int64) << 5) | (windows_b.astype(np.int64) << 20)
    args = (agree / 16, windows_a, windows_b, 2_000.0, 1.1, 16, needed)
    assert np.array_equal(lockstep_surprisal(*args), lockstep_surprisal(*args, classes))
    one, code, neediest = _class_representatives(classes, needed)
    assert np.array_equal(classes[one[code]], classes)  # each pair's class stands for it
    assert len(one) == len(np.unique(classes))
    assert np.array_equal(neediest, np.array([needed[classes == classes[p]].min() for p in one]))
    assert _class_representatives(np.arange(n), needed) is None  # one pair a class: not worth it


def test_a_pairs_windows_are_spread_over_the_two_lifetimes():
    """``W = L_a·L_b/V``: two accounts of the whole run have its length; one alive for a day inside
    the other's month adds nothing to it; two of one day have that day; never fewer windows than
    either account was active in; on a grid of 1/16 octave, each figure named by its step."""
    from linkage.chance import pair_windows

    first, last = np.array([0, 0, 100, 100, 300, 100]), np.array([719, 719, 123, 123, 323, 123])
    windows = np.array([300.0, 200.0, 10.0, 12.0, 5.0, 30.0])  # (the last more than its lifetime: an estimate)
    a, b = np.array([0, 0, 2, 2, 2]), np.array([1, 2, 3, 4, 5])
    w, step = pair_windows(first, last, windows, a, b, 16)
    assert w[0] == pytest.approx(720, rel=0.022) and w[1] == pytest.approx(720, rel=0.022)
    assert w[2] == pytest.approx(24, rel=0.022)
    assert w[3] == pytest.approx(24 * 24, rel=0.022)  # lifetimes apart: as if they met in one window
    assert 30.0 <= w[4] <= 30.0 * 2 ** (1 / 16)
    assert np.array_equal(w, np.exp2(step / 16)) and step.dtype == np.int64


def test_living_in_the_same_days_is_weighed_against_the_runs_own_lifetimes():
    """Two burners alive three days of a month where everyone else lives the month are improbable;
    two of a crowd that all came in the same two days are not; two of the whole month are nothing."""
    from linkage.chance import shared_days_surprisal

    month = 100
    first = np.r_[np.zeros(month, int), [10, 10]]
    last = np.r_[np.full(month, 29), [12, 11]]
    has = np.ones(len(first), bool)
    burners, regulars = shared_days_surprisal(first, last, has, np.array([100, 0]), np.array([101, 1]))
    assert burners == pytest.approx(-np.log(2 / 102)) and regulars == 0.0
    rushed_first, rushed_last = np.zeros(100, int), np.r_[np.ones(80, int), np.full(20, 29)]
    crowd = shared_days_surprisal(rushed_first, rushed_last, np.ones(100, bool), np.array([0]), np.array([1]))
    assert crowd[0] == pytest.approx(-np.log(0.8))
    # accounts without activity are not part of the run's lifetimes
    quiet = np.r_[np.ones(100, bool), [False, False]]
    alone = shared_days_surprisal(first, last, quiet, np.array([0]), np.array([1]))
    assert alone[0] == 0.0


def test_the_days_table_stays_small_however_long_the_run():
    """A stray timestamp of 1970 makes a run 20,000 days long: the table is over the days accounts
    begin or end on, and past 1,024 of them over steps of them; the figures of a short run are
    those of its days."""
    from linkage.chance import shared_days_surprisal

    first = np.r_[np.zeros(100, int), [10, 10], [-20_000]]
    last = np.r_[np.full(100, 29), [12, 11], [-20_000]]
    has = np.ones(len(first), bool)
    burners = shared_days_surprisal(first, last, has, np.array([100]), np.array([101]))
    assert burners[0] == pytest.approx(-np.log(2 / 103))
    rng = np.random.default_rng(4)
    start = rng.integers(0, 50_000, 5_000)  # 5,000 accounts over 137 years
    end = start + rng.integers(0, 30, 5_000)
    many = shared_days_surprisal(start, end, np.ones(5_000, bool), np.arange(0, 100), np.arange(100, 200))
    assert np.isfinite(many).all() and (many >= 0).all() and many.max() > 5
