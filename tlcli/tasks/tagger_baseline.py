"""Before fine-tuning, for tagging: a linear tagger on the frozen per-token features.

A standardised L2 logistic regression from the frozen backbone's feature of each word's first
sub-token to the word's tag (the same features and the same kind of model as the
classification baseline, one word at a time). C is chosen by cross-validation over sentences
(a sentence's words stay in one fold) on the entity F1 of the held-out folds, on at most
CV_MAX_WORDS training words; the final fit uses every training word. It is scored on the test
split with the definitions of test/f1, test/precision, test/recall (entities, seqeval strict
IOB2, micro) and test/acc (words).

Inputs are per-word rows as test keeps them (TokenClassification.baseline_inputs): features
(N, W, D) and tags (N, W), padded with IGNORE_INDEX.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tlcli.data.protocol import IGNORE_INDEX
from tlcli.tasks import entities as E

METHOD = "frozen features + linear tagger"
C_GRID = tuple(float(c) for c in np.logspace(-3, 2, 6))
FOLDS = 3
CV_MAX_WORDS = 4000


def rows(features: np.ndarray, tags: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(features (M, D), tag ids (M,)) of the M words: the positions whose tag is not IGNORE_INDEX."""
    keep = np.asarray(tags) != IGNORE_INDEX
    return np.asarray(features)[keep], np.asarray(tags)[keep]


def linear_tagger(ftr, ytr, fte, yte, names: list[str], seed: int) -> dict[str, Any]:
    """The baseline/* metrics of the linear tagger (and baseline/C, its regularisation)."""
    x, y = rows(ftr, ytr)
    if len(np.unique(y)) < 2:
        raise ValueError("the training words hold a single tag: there is nothing to separate")
    c, how = choose_c(ftr, ytr, names, seed)
    (pred,) = fit_predict(x, y, np.asarray(fte), np.asarray(yte), [c])
    keep = np.asarray(yte) != IGNORE_INDEX
    true_seqs = [[names[i] for i in t[k]] for t, k in zip(yte, keep)]
    pred_seqs = [[names[i] for i in p[k]] for p, k in zip(pred, keep)]
    precision, recall, f1, _ = E.count(true_seqs, pred_seqs).scores()
    words = int(keep.sum())
    return {
        "baseline/test/f1": f1,
        "baseline/test/precision": precision,
        "baseline/test/recall": recall,
        "baseline/test/acc": float((pred[keep] == np.asarray(yte)[keep]).mean()) if words else 0.0,
        "baseline/method": f"{METHOD} ({how})",
        "baseline/C": float(c),
    }


def fit_predict(x: np.ndarray, y: np.ndarray, features: np.ndarray, tags: np.ndarray, grid) -> list[np.ndarray]:
    """For each C of grid: the tag ids, in the shape of `tags` (IGNORE_INDEX where it has it), of a
    standardised L2 logistic regression fit on (x, y). Standardised once; each fit starts from
    the previous C's weights (warm start), which gives the same optimum in fewer iterations."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x)
    xs, keep = scaler.transform(x), tags != IGNORE_INDEX
    held = scaler.transform(features[keep]) if keep.any() else None
    model = LogisticRegression(max_iter=1000, warm_start=True)
    out = []
    for c in grid:
        model.set_params(C=c).fit(xs, y)
        pred = np.full(tags.shape, IGNORE_INDEX, dtype=np.int64)
        if held is not None:
            pred[keep] = model.predict(held)
        out.append(pred)
    return out


def choose_c(ftr, ytr, names: list[str], seed: int) -> tuple[float, str]:
    """(C with the best pooled entity F1 over sentence folds, how it was chosen). Ties go to the
    smaller C, the stronger regularisation."""
    ytr = np.asarray(ytr)
    tagged = np.flatnonzero((ytr != IGNORE_INDEX).any(axis=1))
    order = np.random.default_rng(seed).permutation(tagged)
    words = np.cumsum((ytr[order] != IGNORE_INDEX).sum(axis=1))
    chosen = order[: int(np.searchsorted(words, CV_MAX_WORDS)) + 1]
    if len(chosen) < FOLDS:
        return 1.0, "C=1, fixed: too few training sentences to cross-validate"
    counts = {c: E.EntityCounts() for c in C_GRID}
    folds = np.array_split(chosen, FOLDS)
    for k, held in enumerate(folds):
        fit_on = np.concatenate([f for j, f in enumerate(folds) if j != k])
        x, y = rows(ftr[fit_on], ytr[fit_on])
        if len(np.unique(y)) < 2:
            continue
        keep = ytr[held] != IGNORE_INDEX
        true_seqs = [[names[i] for i in t[m]] for t, m in zip(ytr[held], keep)]
        for c, pred in zip(C_GRID, fit_predict(x, y, ftr[held], ytr[held], C_GRID)):
            for t, p, m in zip(true_seqs, pred, keep):
                counts[c].add(t, [names[i] for i in p[m]])
    f1 = [round(counts[c].scores()[2], 12) for c in C_GRID]
    c = C_GRID[int(np.argmax(f1))]
    used = int((ytr[chosen] != IGNORE_INDEX).sum())
    total = int((ytr != IGNORE_INDEX).sum())
    on = "train" if used == total else f"{used} of {total} training words"
    return c, f"C={c:.3g} by {FOLDS}-fold CV over sentences on entity F1, on {on}"
