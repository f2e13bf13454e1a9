"""The invariance table (Ba et al. 2016, Table 1, plus RMSNorm), checked cell by cell.

Ticks ("yes") are checked as properties with hypothesis: for random layers, batches and transformation
parameters the output must not change beyond the eps-aware tolerance of ``check_invariance``
(eps = 1e-12, so the tolerance is about 1e-9 for generic draws). Crosses ("no") are checked with one
deterministic counterexample each: a fixed seeded layer where the output moves by more than 1e-2,
seven orders of magnitude above the tolerance, so the verdict cannot flip by rounding.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from normcourse.reference import invariance as inv

CELLS = [(norm, column) for norm in inv.INVARIANCE_NORMS for column in inv.COLUMNS]
YES = [cell for cell in CELLS if inv.INVARIANCE_TABLE[cell[0]][cell[1]]]
NO = [cell for cell in CELLS if not inv.INVARIANCE_TABLE[cell[0]][cell[1]]]


def test_table_matches_ba_et_al_and_rmsnorm_paper():
    expected = {"batch_norm": "yes no yes yes yes no", "layer_norm": "yes yes no yes no yes",
                "rms_norm": "yes no no yes no yes"}
    for norm, row in expected.items():
        flags = [word == "yes" for word in row.split()]
        assert [inv.INVARIANCE_TABLE[norm][c] for c in inv.COLUMNS] == flags, norm
    assert set(inv.TRANSFORMS) == set(inv.COLUMNS) == set(inv.COLUMN_TITLES)


layers = st.fixed_dictionaries({
    "seed": st.integers(0, 2**32 - 1),
    "n_cases": st.integers(2, 9),
    "n_inputs": st.integers(1, 6),
    "n_units": st.integers(2, 9),
    "log_delta": st.floats(np.log(0.1), np.log(10.0)),
    "affine": st.booleans(),
})


def _transform(column, W, X, rng, log_delta):
    delta = float(np.exp(log_delta))
    if column == "weight_matrix_recenter":
        return inv.recenter_weight_matrix(W, X, rng.normal(scale=3.0, size=W.shape[1]))
    if column == "data_recenter":
        return inv.recenter_data(W, X, rng.normal(scale=3.0, size=W.shape[1]))
    if column == "weight_vector_rescale":
        return inv.rescale_weight_vector(W, X, delta, unit=int(rng.integers(W.shape[0])))
    if column == "single_case_rescale":
        return inv.rescale_single_case(W, X, delta, case=int(rng.integers(X.shape[0])))
    return inv.TRANSFORMS[column](W, X, delta)


@pytest.mark.parametrize("norm,column", YES, ids=[f"{n}-{c}" for n, c in YES])
@given(layer=layers)
def test_tick_is_an_invariance(norm, column, layer):
    rng = np.random.default_rng(layer["seed"])
    W = rng.normal(size=(layer["n_units"], layer["n_inputs"]))
    X = rng.normal(size=(layer["n_cases"], layer["n_inputs"]))
    gain = rng.uniform(-2, 2, size=layer["n_units"]) if layer["affine"] else None
    bias = rng.normal(size=layer["n_units"]) if layer["affine"] else None
    W_new, X_new = _transform(column, W, X, rng, layer["log_delta"])
    check = inv.check_invariance(norm, W, X, W_new, X_new, gain, bias)
    assert check.invariant, f"{norm} {column}: output moved by {check.change:.3g} > {check.tolerance:.3g}"


@pytest.mark.parametrize("norm,column", NO, ids=[f"{n}-{c}" for n, c in NO])
def test_cross_has_a_counterexample(norm, column):
    rng = np.random.default_rng(2016)
    W, X = rng.normal(size=(6, 5)), rng.normal(size=(8, 5))
    W_new, X_new = _transform(column, W, X, rng, np.log(3.0))
    check = inv.check_invariance(norm, W, X, W_new, X_new)
    assert check.change > 1e-2 and check.change > 1e6 * check.tolerance, check


def test_verify_table_reproduces_every_cell():
    for seed in range(3):
        result = inv.verify_table(seed)
        observed = {n: {c: result[n][c].invariant for c in inv.COLUMNS} for n in inv.INVARIANCE_NORMS}
        assert observed == inv.INVARIANCE_TABLE


def test_weight_recentering_shifts_each_case_by_one_scalar():
    """Why LN keeps the weight-matrix re-centering: every unit of case n moves by the same v.x_n."""
    rng = np.random.default_rng(1)
    W, X, v = rng.normal(size=(4, 3)), rng.normal(size=(5, 3)), rng.normal(size=3)
    W_new, _ = inv.recenter_weight_matrix(W, X, v)
    shift = X @ W_new.T - X @ W.T
    np.testing.assert_allclose(shift, np.repeat((X @ v)[:, None], 4, axis=1), atol=1e-12)


def test_eps_breaks_rescaling_invariance_when_not_negligible():
    """The tolerance is not decorative: with eps comparable to the variance a re-scaling shows."""
    rng = np.random.default_rng(3)
    W, X = rng.normal(size=(6, 5)), rng.normal(size=(8, 5))
    W_new, X_new = inv.rescale_weight_matrix(W, X, 0.01)
    check = inv.check_invariance("layer_norm", W, X, W_new, X_new, eps=1e-3)
    assert check.change > 1e-2
    assert inv.check_invariance("layer_norm", W, X, W_new, X_new).invariant


def test_negative_scale_is_not_an_invariance():
    """The table's re-scalings are by delta > 0: a negative factor flips the sign of x-hat."""
    rng = np.random.default_rng(4)
    W, X = rng.normal(size=(6, 5)), rng.normal(size=(8, 5))
    W_new, X_new = inv.rescale_data(W, X, -2.0)
    assert not inv.check_invariance("layer_norm", W, X, W_new, X_new).invariant
