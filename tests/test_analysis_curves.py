"""Specification of ``vreason.analysis.curves``: mean curves of unequal length by step and by
position, with the Student-t band checked against a table value."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vreason import analysis

T_975_DF2 = 4.302652729911275  # Student t quantile, two-sided 95%, 2 degrees of freedom (table value)


def test_mean_curve_by_step_averages_samples_still_generating():
    curve = analysis.mean_curve([[1.0, 2.0, 3.0], [3.0, 4.0], [5.0]], align="step")
    np.testing.assert_array_equal(curve.x, [1, 2, 3])
    np.testing.assert_array_equal(curve.mean, [3.0, 3.0, 3.0])
    np.testing.assert_array_equal(curve.count, [3, 2, 1])
    half = T_975_DF2 * 2.0 / math.sqrt(3)  # step 1: values 1, 3, 5 have s = 2
    assert curve.lower[0] == pytest.approx(3.0 - half)
    assert curve.upper[0] == pytest.approx(3.0 + half)
    assert math.isnan(curve.lower[2]) and math.isnan(curve.upper[2])  # one sample: no spread


def test_mean_curve_min_count_cuts_the_tail():
    curve = analysis.mean_curve([[1.0, 2.0, 3.0], [3.0, 4.0], [5.0]], align="step", min_count=2)
    np.testing.assert_array_equal(curve.count, [3, 2])


def test_mean_curve_normalized_maps_linear_curves_onto_one_line():
    # y = slope * position over each sample's own length; slopes 1 and 3 average to 2.
    curves = [np.linspace(0.0, 1.0, 5), np.linspace(0.0, 3.0, 9)]
    curve = analysis.mean_curve(curves, align="normalized", n_points=11)
    np.testing.assert_allclose(curve.x, np.linspace(0, 1, 11))
    np.testing.assert_allclose(curve.mean, 2.0 * curve.x)
    np.testing.assert_array_equal(curve.count, [2] * 11)


def test_mean_curve_rejects_unknown_alignment():
    with pytest.raises(ValueError, match="align"):
        analysis.mean_curve([[1.0]], align="time")
