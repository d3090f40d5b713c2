"""Does a 10-per-class probe gain from augmented views of its train images?

    .venv/bin/python -m bench.kshot_views flowers5,brain_tumor_mri,cats_vs_dogs 0,1,2

For each set and seed: the same 10 training images per class that `tlcli fit data.k_shot=10`
draws, Lite0 (offline ImageNet weights) eval-mode features of each image (the plain view) plus
0, 4 or 9 extra views through the light training transform (random resized crop + flip), a
standardised logistic regression with C by 5-fold CV grouped by image (views of one image never
straddle folds), scored on the plain test images. Prints one line per set and seed; the results
are in bench/results/kshot_views.md.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedGroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from tlcli import build
from tlcli.config.compose import compose_checked
from tlcli.data.transforms import image_transforms

DATA = "/work/shared/data"
CS = [10.0**e for e in (-4, -3, -2.5, -2, -1.5, -1, -0.5, 0, 1)]
VIEWS = (0, 4, 9)


@torch.no_grad()
def features(backbone, load, paths: list, transform, batch: int = 32) -> np.ndarray:
    out = [
        backbone(torch.stack([transform(load(p)) for p in paths[i : i + batch]])).numpy()
        for i in range(0, len(paths), batch)
    ]
    return np.concatenate(out)


def probe_accuracy(views: list[np.ndarray], y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, seed: int):
    x = np.concatenate(views)
    copies = len(views)
    search = GridSearchCV(
        make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000)),
        {"logisticregression__C": CS},
        cv=StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=seed),
    ).fit(x, np.tile(y, copies), groups=np.tile(np.arange(len(y)), copies))
    return float((search.predict(test_x) == test_y).mean()), search.best_params_["logisticregression__C"]


def run(name: str, seed: int) -> str:
    overrides = ["backbone=lite0_offline", "data=imagefolder", f"data.root={DATA}/{name}", f"seed={seed}"]
    overrides += ["data.k_shot=10", "data.num_workers=0", "data.feature_cache_dir=/tmp/tlcli_kshot_views"]
    cfg = compose_checked("fit", overrides)
    backbone = build.backbone(cfg.backbone).eval()
    dm = build.data(cfg.data, backbone.data_config(), augment=False)
    train_tf, eval_tf = image_transforms(backbone.data_config(), augment="light")
    train, test = dm.samples["train"], dm.samples["test"]
    start = time.time()
    torch.manual_seed(seed)
    test_x = features(backbone, dm.image_loader, list(test.inputs), eval_tf)
    views = [features(backbone, dm.image_loader, list(train.inputs), eval_tf)]
    views += [features(backbone, dm.image_loader, list(train.inputs), train_tf) for _ in range(max(VIEWS))]
    y, test_y = np.asarray(train.targets), np.asarray(test.targets)
    cells = []
    for v in VIEWS:
        acc, c = probe_accuracy(views[: v + 1], y, test_x, test_y, seed)
        cells.append(f"views={v}: {acc:.3f} (C={c:.3g})")
    return f"{name} {seed} " + "; ".join(cells) + f" {time.time() - start:.0f} s"


if __name__ == "__main__":
    torch.set_num_threads(2)
    for set_name in sys.argv[1].split(","):
        for s in (int(k) for k in sys.argv[2].split(",")):
            print(run(set_name, s), flush=True)
