"""ROC AUC and PSNR against hand-computed values."""
import math

import numpy as np
import pytest

from safecfg_core.metrics import psnr, roc_auc


def test_auc_perfect_separation_is_one_and_reversed_is_zero():
    assert roc_auc([0.1, 0.2, 0.3], [0.4, 0.5]) == 1.0
    assert roc_auc([0.4, 0.5], [0.1, 0.2, 0.3]) == 0.0


def test_auc_hand_example_with_tie():
    # pairs (neg, pos): (1,2) win, (1,1) tie, (3,2) loss, (3,1) loss -> (1 + 0.5) / 4
    assert roc_auc([1.0, 3.0], [2.0, 1.0]) == pytest.approx(0.375)


def test_auc_rejects_empty_and_nan():
    with pytest.raises(ValueError, match="at least one"):
        roc_auc([], [1.0])
    with pytest.raises(ValueError, match="NaN"):
        roc_auc([float("nan")], [1.0])


def test_psnr_hand_values():
    ref = np.zeros((4, 4))
    img = np.full((4, 4), 0.1)  # mse = 0.01 -> 20 dB
    assert psnr(img, ref) == pytest.approx(20.0)
    assert math.isinf(psnr(ref, ref))
