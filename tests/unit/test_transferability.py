"""LogME, H-score, the linear probe, LEEP and NCE on synthetic inputs whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from tlcli.reporting.transferability import hscore, leep, linear_probe_accuracy, logme, logme_evidence, nce

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


# ---------------------------------------------------------------- LEEP and NCE (source classifier's output)


def noisy_source(confusion: float, n_source: int = 6) -> np.ndarray:
    """Source probabilities (60, 6): class c puts 1 - confusion on source class 2c (spread evenly
    otherwise), so a low confusion is an informative source."""
    theta = np.full((len(LABELS), n_source), confusion / (n_source - 1))
    theta[np.arange(len(LABELS)), 2 * LABELS] = 1 - confusion
    return theta


def test_leep_is_zero_when_each_source_class_belongs_to_one_target_class():
    y = np.array([0, 0, 1, 1, 2, 2])
    z = np.array([0, 3, 1, 1, 2, 2])  # target 0 splits over source 0 and 3; source 4 is never predicted
    assert leep(np.eye(5)[z], y) == pytest.approx(0.0, abs=1e-12)


def test_leep_of_a_uniform_source_is_the_mean_log_prior():
    y = np.array([0, 0, 0, 1, 2, 2])
    prior = np.bincount(y) / len(y)
    # theta carries no information: P(y | z) = P(y) for every z, so each example scores log P(y_i)
    assert leep(np.full((6, 4), 0.25), y) == pytest.approx(np.log(prior[y]).mean(), abs=1e-12)


def test_leep_by_hand_on_two_examples():
    theta = np.array([[0.8, 0.2], [0.3, 0.7]])
    # P(y, z) = [[0.4, 0.1], [0.15, 0.35]], P(z) = [0.55, 0.45]
    eep0 = 0.8 * 0.4 / 0.55 + 0.2 * 0.1 / 0.45
    eep1 = 0.3 * 0.15 / 0.55 + 0.7 * 0.35 / 0.45
    assert leep(theta, np.array([0, 1])) == pytest.approx((np.log(eep0) + np.log(eep1)) / 2, rel=1e-12)
    # labels are any integers: relabelling the classes changes nothing
    assert leep(theta, np.array([7, -2])) == pytest.approx(leep(theta, np.array([0, 1])), rel=1e-12)


def test_nce_is_minus_the_conditional_entropy_by_hand():
    # z = 0: y = 0, 0, 1; z = 1: y = 1, 1, 1. H(Y | Z) = 1/2 H(2/3, 1/3) + 1/2 * 0
    z = np.array([0, 0, 0, 1, 1, 1])
    y = np.array([0, 0, 1, 1, 1, 1])
    expected = 0.5 * (2 / 3 * np.log(2 / 3) + 1 / 3 * np.log(1 / 3))
    assert nce(z, y) == pytest.approx(expected, rel=1e-12)
    # from probabilities, the argmax is the hard label
    probs = np.eye(2)[z] * 0.6 + 0.2
    assert nce(probs, y) == pytest.approx(expected, rel=1e-12)
    # a source that names the target class: 0; one source class for everything: -H(Y)
    assert nce(y * 5, y) == pytest.approx(0.0, abs=1e-12)
    assert nce(np.zeros(6, dtype=int), y) == pytest.approx(1 / 3 * np.log(1 / 3) + 2 / 3 * np.log(2 / 3))


def test_leep_and_nce_are_higher_for_a_more_informative_source():
    clear, vague, none = noisy_source(0.1), noisy_source(0.6), noisy_source(5 / 6)  # 5/6: uniform
    assert leep(clear, LABELS) > leep(vague, LABELS) > leep(none, LABELS)
    assert leep(none, LABELS) == pytest.approx(np.log(1 / 3))
    assert all(score <= 0 for score in (leep(clear, LABELS), nce(clear, LABELS)))
    # hard labels: the clear source names every class; a partly confused one less so; a constant one not at all
    partly = 2 * LABELS
    partly[::3] = 0
    assert nce(clear, LABELS) == pytest.approx(0.0, abs=1e-12)
    assert 0.0 > nce(partly, LABELS) > nce(np.zeros_like(LABELS), LABELS) == pytest.approx(np.log(1 / 3))


def test_leep_and_nce_check_their_inputs():
    with pytest.raises(ValueError, match="source_probs must be probabilities"):
        leep(RNG.normal(size=(60, 6)), LABELS)
    with pytest.raises(ValueError, match="labels must be integer class indices"):
        leep(noisy_source(0.1), LABELS.astype(float))
    with pytest.raises(ValueError, match=r"expected source labels \(N,\) of integers or probabilities \(N, Z\)"):
        nce(np.zeros(59, dtype=int), LABELS)
