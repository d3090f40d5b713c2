"""Transferability scores: how well frozen features suit a labelled target, without fine-tuning.

All three take pooled features (N, D) and integer labels (N,):
- `logme`: LogME (You et al., ICML 2021), the maximised log evidence of a Bayesian linear
  model from the features to each one-hot class target, per sample, averaged over classes.
- `hscore`: H-score (Bao et al., ICIP 2019), tr(cov(f)^-1 cov(E[f|y])), regularised as in
  Ibrahim et al. (ECML 2022): the covariance is shrunk towards a scaled identity
  (Ledoit-Wolf by default), because the plain score saturates at C - 1 for any features
  once D approaches N.
- `linear_probe_accuracy`: a logistic regression trained on one split, scored on another.

Two more read the candidate's own source classifier (its ImageNet head) instead of its features:
- `leep`: LEEP (Nguyen et al., ICML 2020), from the source head's class probabilities (N, Z).
- `nce`: NCE (Tran et al., ICCV 2019), from its hard labels (argmax of those probabilities).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

# MacKay's fixed point usually converges in a handful of iterations, but crawls when the
# evidence barely depends on alpha (N < D, little signal). An iteration costs O(k), so a
# generous cap is cheap; the original LogME code stops after 11.
_MAX_ITER = 1000
_TOL = 1e-6
# softmax outputs in float32 sum to 1 within a few ulps; a row further off than this is not probabilities
_PROB_TOL = 1e-4


def _as_labels(labels: np.ndarray) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"expected labels (N,), got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integer class indices, got dtype {y.dtype}")
    return y


def _as_inputs(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    if f.ndim != 2 or y.ndim != 1 or len(f) != len(y):
        raise ValueError(f"expected features (N, D) and labels (N,), got {f.shape} and {y.shape}")
    return f, _as_labels(y)


def logme_evidence(y: np.ndarray, u: np.ndarray, sigma: np.ndarray, n_features: int) -> tuple[float, float, float]:
    """Maximised log evidence per sample of y = F w + noise, w ~ N(0, 1/alpha), noise ~ N(0, 1/beta).

    u, sigma: left singular vectors (N, k) and squared singular values (k,) of F (N, D).
    Returns (evidence / N, alpha, beta). Everything is expressed in the SVD basis, so each
    fixed-point step costs O(N k) instead of a D x D solve.
    """
    n = len(y)
    x2 = (u.T @ y) ** 2  # squared coordinates of y along F's left singular vectors
    outside = max(float(y @ y - x2.sum()), 0.0)  # part of y no weight vector can reach
    alpha, beta = 1.0, 1.0
    for _ in range(_MAX_ITER):
        t = alpha / beta
        gamma = float((sigma / (sigma + t)).sum())  # effective number of fitted parameters
        m2 = float((sigma * x2 / (sigma + t) ** 2).sum())  # |posterior mean|^2
        res2 = float((x2 * (t / (sigma + t)) ** 2).sum()) + outside  # |y - F m|^2
        alpha = gamma / max(m2, 1e-12)
        beta = (n - gamma) / max(res2, 1e-12)
        if abs(alpha / beta - t) <= _TOL * t:
            break
    t = alpha / beta
    m2 = float((sigma * x2 / (sigma + t) ** 2).sum())
    res2 = float((x2 * (t / (sigma + t)) ** 2).sum()) + outside
    # log|alpha I_D + beta F^T F|: k singular directions, and D - k directions with alpha alone
    logdet = float(np.log(alpha + beta * sigma).sum()) + (n_features - len(sigma)) * np.log(alpha)
    evidence = (
        n_features / 2 * np.log(alpha)
        + n / 2 * np.log(beta)
        - beta / 2 * res2
        - alpha / 2 * m2
        - logdet / 2
        - n / 2 * np.log(2 * np.pi)
    )
    return float(evidence / n), float(alpha), float(beta)


def logme(features: np.ndarray, labels: np.ndarray) -> float:
    """LogME: mean over classes of the per-sample maximised log evidence (higher = better).

    Labels may be any integers: each distinct value is one class, so relabelling the
    classes leaves the score unchanged.
    """
    f, y = _as_inputs(features, labels)
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    sigma = s**2
    classes = np.unique(y)
    scores = [logme_evidence((y == c).astype(np.float64), u, sigma, f.shape[1])[0] for c in classes]
    return float(np.mean(scores))


def hscore(features: np.ndarray, labels: np.ndarray, shrinkage: float | str = "auto") -> float:
    """H-score: tr(cov(f)^-1 cov(E[f|y])), between 0 and (number of classes - 1); higher = better.

    shrinkage: "auto" (the Ledoit-Wolf estimate) or a weight in [0, 1] that mixes the feature
    covariance with mu * I (mu = its mean eigenvalue). A small value is a ridge for stability;
    0 is Bao et al.'s original score (which needs N much larger than D).
    """
    f, y = _as_inputs(features, labels)
    f = f - f.mean(axis=0)
    n, d = f.shape
    if shrinkage == "auto":
        from sklearn.covariance import ledoit_wolf_shrinkage

        shrinkage = float(ledoit_wolf_shrinkage(f, assume_centered=True))
    elif not 0.0 <= float(shrinkage) <= 1.0:
        raise ValueError(f"shrinkage must be 'auto' or in [0, 1], got {shrinkage}")
    # In the eigenbasis of cov(f) (right singular vectors v_i of f, eigenvalues s_i^2 / n) the
    # shrunk covariance is diagonal, and cov(E[f|y]) lives in the span of f's rows, so
    # H = (1 - shrinkage) / n * sum_i |g v_i|^2 / eigenvalue_i: no D x D inverse, O(N D min(N, D)).
    _, s, vh = np.linalg.svd(f, full_matrices=False)
    shrunk = (1.0 - float(shrinkage)) * s**2 / n + float(shrinkage) * (s**2).sum() / (n * d)
    # cov(E[f|y]): every sample replaced by the mean of its class
    g = np.zeros_like(f)
    for c in np.unique(y):
        g[y == c] = f[y == c].mean(axis=0)
    between = ((g @ vh.T) ** 2).sum(axis=0) / n  # v_i^T cov(E[f|y]) v_i
    # Zero eigenvalues (shrinkage 0 and rank-deficient f) are skipped, as a pseudo-inverse would.
    keep = shrunk > shrunk.max() * 1e-12
    # (1 - shrinkage) on the between-class part too, as in Ibrahim et al.'s regularised H-score:
    # shrinking cov(f) alone would let noise dimensions score above C - 1.
    return float((1.0 - float(shrinkage)) * (between[keep] / shrunk[keep]).sum())


def linear_probe_accuracy(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    eval_features: np.ndarray,
    eval_labels: np.ndarray,
    c: float = 1.0,
    max_iter: int = 1000,
) -> float:
    """Accuracy on the eval split of a standardised L2 logistic regression fit on the train split."""
    proba = linear_probe(train_features, train_labels, c=c, max_iter=max_iter)(eval_features)
    _, yev = _as_inputs(eval_features, eval_labels)
    return float((proba.argmax(axis=1) == yev).mean())


def linear_probe(
    train_features: np.ndarray, train_labels: np.ndarray, c: float = 1.0, max_iter: int = 1000
) -> Callable[[np.ndarray], np.ndarray]:
    """Fit a standardised L2 logistic regression; returns features (M, D) -> class probabilities (M, C).

    Columns follow the label values 0..C-1 (every class must occur in train).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    ftr, ytr = _as_inputs(train_features, train_labels)
    scaler = StandardScaler().fit(ftr)
    ftr = scaler.transform(ftr)
    # The L2-penalised weights lie in the span of the training rows (representer theorem), so
    # projecting onto that span changes no prediction and makes wide features (D >> N) cheap.
    basis = None
    if ftr.shape[1] > ftr.shape[0]:
        _, s, vh = np.linalg.svd(ftr, full_matrices=False)
        basis = vh[s > s.max() * 1e-10].T
        ftr = ftr @ basis
    probe = LogisticRegression(C=c, max_iter=max_iter).fit(ftr, ytr)

    def predict_proba(features: np.ndarray) -> np.ndarray:
        f = scaler.transform(np.asarray(features, dtype=np.float64))
        return probe.predict_proba(f if basis is None else f @ basis)

    return predict_proba


def _indices(values: np.ndarray) -> tuple[np.ndarray, int]:
    """Distinct values -> 0..K-1 (in sorted order), and K."""
    distinct, index = np.unique(values, return_inverse=True)
    return index.reshape(-1), len(distinct)


def leep(source_probs: np.ndarray, labels: np.ndarray) -> float:
    """LEEP, the log expected empirical prediction (Nguyen et al., "LEEP: A New Measure to Evaluate
    Transferability of Learned Representations", ICML 2020); higher = better, at most 0.

    source_probs: theta (N, Z), the source classifier's softmax on each target example; labels (N,).
    P(y, z) = mean_i theta_iz [y_i = y], P(y | z) = P(y, z) / P(z), and
    LEEP = mean_i log sum_z P(y_i | z) theta_iz: the log likelihood of the target labels under the
    classifier that maps each source class to target classes by their co-occurrence.
    """
    theta, y = _as_inputs(source_probs, labels)
    if (theta < 0).any() or not np.allclose(theta.sum(axis=1), 1.0, atol=_PROB_TOL):
        raise ValueError("source_probs must be probabilities: non-negative rows that sum to 1 (a softmax)")
    index, n_classes = _indices(y)
    onehot = np.eye(n_classes)[index]  # (N, C)
    joint = onehot.T @ theta / len(y)  # P(y, z), (C, Z)
    marginal = joint.sum(axis=0)  # P(z)
    # a source class no example puts mass on has no conditional; theta is 0 there, so 0 loses nothing
    conditional = np.divide(joint, marginal, out=np.zeros_like(joint), where=marginal > 0)
    eep = (theta * conditional[index]).sum(axis=1)  # the expected empirical prediction of y_i
    return float(np.log(np.clip(eep, np.finfo(np.float64).tiny, None)).mean())


def nce(source_labels_or_probs: np.ndarray, labels: np.ndarray) -> float:
    """NCE, the negative conditional entropy -H(Y | Z) (Tran et al., "Transferability and Hardness
    of Supervised Classification Tasks", ICCV 2019); higher = better, at most 0.

    source_labels_or_probs: the source classifier's hard label z_i of each target example (N,), or
    its class probabilities (N, Z), of which the argmax is taken. With the empirical joint P(y, z) of
    the counts, NCE = sum_{y,z} P(y, z) log P(y | z); empty cells add nothing.
    """
    z = np.asarray(source_labels_or_probs)
    if z.ndim == 2:
        z = z.argmax(axis=1)
    y = _as_labels(labels)
    if z.shape != y.shape or not np.issubdtype(z.dtype, np.integer):
        raise ValueError(f"expected source labels (N,) of integers or probabilities (N, Z), got {z.shape} {z.dtype}")
    yi, n_classes = _indices(y)
    zi, n_source = _indices(z)
    counts = np.zeros((n_classes, n_source))
    np.add.at(counts, (yi, zi), 1.0)
    joint = counts / len(y)
    conditional = joint / joint.sum(axis=0)  # every column holds at least one example
    cells = joint > 0
    return float((joint[cells] * np.log(conditional[cells])).sum())
