"""LogME, H-score and the linear probe on synthetic features whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from tlcli.reporting.transferability import hscore, linear_probe_accuracy, logme, logme_evidence

RNG = np.random.default_rng(0)
LABELS = np.repeat(np.arange(3), 20)  # 3 classes x 20 samples


def separating(n_noise: int = 7, scale: float = 3.0) -> np.ndarray:
    """Features whose first 3 dims are the one-hot class (times `scale`) plus noise."""
    signal = np.eye(3)[LABELS] * scale + RNG.normal(size=(len(LABELS), 3)) * 0.5
    return np.hstack([signal, RNG.normal(size=(len(LABELS), n_noise))])


def reference_log_evidence(f: np.ndarray, y: np.ndarray, alpha: float, beta: float) -> float:
    """log N(y; 0, I/beta + F F^T/alpha): the evidence of the Bayesian linear model, computed directly."""
    n = len(y)
    cov = np.eye(n) / beta + f @ f.T / alpha
    _, logdet = np.linalg.slogdet(cov)
    return float(-0.5 * (n * np.log(2 * np.pi) + logdet + y @ np.linalg.solve(cov, y)))


@pytest.mark.parametrize("shape", [(40, 6), (12, 30)], ids=["N>D", "N<D"])
def test_logme_evidence_matches_the_gaussian_marginal_likelihood_at_its_maximum(shape):
    f = RNG.normal(size=shape)
    y = (RNG.random(shape[0]) < 0.4).astype(np.float64) + 0.3 * f[:, 0]
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    per_sample, alpha, beta = logme_evidence(y, u, s**2, f.shape[1])
    best = reference_log_evidence(f, y, alpha, beta)
    # the SVD-basis formula equals the direct O(N^3) marginal likelihood ...
    assert per_sample * len(y) == pytest.approx(best, rel=1e-9)
    # ... and the fixed point is its maximum: moving alpha or beta either way lowers it
    for da, db in [(1.05, 1), (0.95, 1), (1, 1.05), (1, 0.95)]:
        assert reference_log_evidence(f, y, alpha * da, beta * db) < best


def test_logme_ranks_separating_features_above_random_ones():
    good, bad = separating(), RNG.normal(size=(len(LABELS), 10))
    assert logme(good, LABELS) > logme(bad, LABELS) + 0.5
    # more signal, higher score
    assert logme(separating(scale=6.0), LABELS) > logme(separating(scale=1.0), LABELS)


def test_logme_is_invariant_to_relabelling_the_classes():
    f = separating()
    relabelled = np.array([7, 2, 40])[LABELS]  # any distinct integers, in another order
    assert logme(f, relabelled) == pytest.approx(logme(f, LABELS), abs=1e-12)


def test_logme_mean_of_per_class_evidence():
    f = separating()
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    per_class = [logme_evidence((LABELS == c).astype(float), u, s**2, f.shape[1])[0] for c in range(3)]
    assert logme(f, LABELS) == pytest.approx(np.mean(per_class))


def test_hscore_of_one_feature_is_the_correlation_ratio():
    """D = 1: H = between-class variance / total variance (eta squared), by hand."""
    x = RNG.normal(size=len(LABELS)) + LABELS * 1.5
    means = np.array([x[LABELS == c].mean() for c in range(3)])
    eta2 = ((means[LABELS] - x.mean()) ** 2).sum() / ((x - x.mean()) ** 2).sum()
    assert hscore(x[:, None], LABELS, 0.0) == pytest.approx(eta2)
    # one feature: shrinking towards its own variance leaves cov(f); only the (1 - s) factor on cov(E[f|y]) acts
    assert hscore(x[:, None], LABELS, 0.3) == pytest.approx(0.7 * eta2)


def test_hscore_is_bounded_by_classes_minus_one_and_reaches_it_for_clean_clusters():
    clean = np.eye(3)[LABELS] * 5 + RNG.normal(size=(len(LABELS), 3)) * 1e-3
    assert hscore(clean, LABELS, 0.0) == pytest.approx(2.0, abs=1e-3)
    for f in (separating(), RNG.normal(size=(len(LABELS), 10)), RNG.normal(size=(len(LABELS), 300))):
        assert 0.0 <= hscore(f, LABELS) <= 2.0 + 1e-9


def test_hscore_ranks_separating_features_above_random_ones_even_when_d_exceeds_n():
    wide_noise = RNG.normal(size=(len(LABELS), 300))
    assert hscore(separating(), LABELS) > hscore(RNG.normal(size=(len(LABELS), 10)), LABELS) + 1.0
    # unshrunk, the plain score saturates at C - 1 for pure noise once D >= N ...
    assert hscore(wide_noise, LABELS, 0.0) == pytest.approx(2.0)
    # ... Ledoit-Wolf shrinkage keeps noise low
    assert hscore(wide_noise, LABELS) < 0.6
    # ... while 3 strong class dims among 300 noise dims still score near the bound
    assert hscore(np.hstack([separating(scale=9.0), wide_noise]), LABELS) > 1.5


def test_hscore_rejects_a_bad_shrinkage():
    with pytest.raises(ValueError, match=r"shrinkage must be 'auto' or in \[0, 1\], got 1.5"):
        hscore(separating(), LABELS, 1.5)


def test_linear_probe_accuracy_on_train_and_eval_splits():
    train, test = separating(), separating()
    assert linear_probe_accuracy(train, LABELS, test, LABELS) == 1.0
    noise = linear_probe_accuracy(RNG.normal(size=(60, 10)), LABELS, RNG.normal(size=(60, 10)), LABELS)
    assert noise < 0.6


def test_inputs_are_checked():
    with pytest.raises(ValueError, match=r"expected features \(N, D\) and labels \(N,\), got \(60,\) and \(60,\)"):
        logme(np.zeros(60), LABELS)
    with pytest.raises(ValueError, match="labels must be integer class indices, got dtype float64"):
        logme(separating(), LABELS.astype(float))


def direct_hscore(f: np.ndarray, y: np.ndarray, s: float) -> float:
    """The textbook formula with explicit D x D matrices and a pseudo-inverse."""
    f = f - f.mean(axis=0)
    n, d = f.shape
    cov_f = f.T @ f / n
    cov_f = (1 - s) * cov_f + s * np.trace(cov_f) / d * np.eye(d)
    g = np.stack([f[y == c].mean(axis=0) for c in y])
    return float(np.trace(np.linalg.pinv(cov_f, hermitian=True) @ ((1 - s) * g.T @ g / n)))


@pytest.mark.parametrize("shape", [(60, 8), (60, 150)], ids=["N>D", "N<D"])
@pytest.mark.parametrize("s", [0.0, 0.05, 0.6])
def test_hscore_in_the_svd_basis_equals_the_direct_formula(shape, s):
    f = RNG.normal(size=shape) + np.eye(3)[LABELS] @ RNG.normal(size=(3, shape[1]))
    assert hscore(f, LABELS, s) == pytest.approx(direct_hscore(f, LABELS, s), rel=1e-6)


def test_linear_probe_on_wide_features_predicts_like_the_unprojected_probe():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    mix = RNG.normal(size=(3, 200))
    train = RNG.normal(size=(60, 200)) * 3 + np.eye(3)[LABELS] @ mix
    test = RNG.normal(size=(60, 200)) * 3 + np.eye(3)[LABELS] @ mix
    plain = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000)).fit(train, LABELS)
    expected = float((plain.predict(test) == LABELS).mean())
    assert 0.5 < expected < 1.0  # a probe that gets some, not all, right: a meaningful comparison
    assert linear_probe_accuracy(train, LABELS, test, LABELS) == expected
