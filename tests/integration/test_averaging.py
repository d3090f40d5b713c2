"""`tlcli wise` and `tlcli soup` on two tiny fits and runs built from them, in-process."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
import yaml

from tests.conftest import TINY, compose_fit, make_imagefolder
from tlcli import build, restore, trust
from tlcli.cli import main
from tlcli.commands.fit import fit
from tlcli.training import averaging

BEST = Path("checkpoints") / "best.ckpt"
TEMPERATURE = "task.temperature"  # refitted on val for every averaged model (tlcli.training.calibrate)


def _job(job_dir: Path, overrides: list[str]) -> None:
    (job_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    (job_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))


def _crafted(src: Path, dst: Path, overrides: list[str], edit) -> None:
    """A copy of run `src` whose checkpoint `edit` changed: a run no fit needs to produce."""
    (dst / "checkpoints").mkdir(parents=True)
    shutil.copy(src / "metrics.json", dst / "metrics.json")
    ckpt = torch.load(src / BEST, map_location="cpu", weights_only=True)
    edit(ckpt)
    torch.save(ckpt, dst / BEST)
    _job(dst, overrides)


def _noisy_head(ckpt) -> None:
    gen = torch.Generator().manual_seed(0)
    for k, v in ckpt["state_dict"].items():
        if k.startswith("head.") and v.is_floating_point():
            ckpt["state_dict"][k] = 50 * torch.randn(v.shape, generator=gen)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A hand-made sweep dir: jobs 0 and 1 are real fits (lr 1e-3 and 3e-3); job 2 is job 1 with a head
    of large noise (far worse on val); job 3 failed; job 4 is job 0 on a k_shot=2 training split."""
    tmp = tmp_path_factory.mktemp("averaging")
    root = make_imagefolder(tmp / "data")
    d = tmp / "sweep"
    d.mkdir()
    (d / "multirun.yaml").write_text("hydra: {}\n")
    for job, lr in ((0, "1e-3"), (1, "3e-3")):
        fit(compose_fit([*TINY, "data=imagefolder", f"data.root={root}", f"optimizer.lr={lr}"], d / str(job)))
        _job(d / str(job), [f"optimizer.lr={lr}"])
    _crafted(d / "1", d / "2", ["optimizer.lr=3e-3", "+noise=50"], _noisy_head)
    _job(d / "3", ["optimizer.lr=1e0"])

    def k_shot(ckpt):
        ckpt["tlcli"]["config"]["data"]["k_shot"] = 2

    _crafted(d / "0", d / "4", ["optimizer.lr=1e-3", "data.k_shot=2"], k_shot)
    return SimpleNamespace(dir=d, tmp=tmp)


def _val_loss_by_hand(module, datamodule, state) -> float:
    module.load_state_dict(state)
    total, n = 0.0, 0
    with torch.no_grad():
        for x, y in datamodule.val_dataloader():
            total += F.cross_entropy(module(x), y, reduction="sum").item()
            n += len(y)
    return total / n


def test_wise_chooses_alpha_on_val_and_writes_a_run_that_test_reproduces(sweep, tmp_path, capsys):
    run, out = sweep.dir / "0", tmp_path / "wise"
    assert main(["wise", f"ckpt={run}", "alphas=[0,0.5,1]", "accelerator=cpu", f"hydra.run.dir={out}"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())

    # theta_0 and the val loss of each alpha, by hand on the same model and split
    ckpt = restore.read(run / BEST)
    module = restore.loaded(ckpt, "ckpt")
    finetuned = averaging.state_of(module)
    datamodule = build.data(dict(ckpt["tlcli"]["config"]["data"]), module.backbone.data_config(), make=trust.build)
    theta0, notes, _ = averaging.starting_point(ckpt, "ckpt", finetuned, datamodule, module.task)
    torch.manual_seed(42)  # backbone.weights=none: theta_0's backbone is the init the fit drew from its seed
    fresh = trust.build(ckpt["tlcli"]["config"]["backbone"]).state_dict()
    assert all(torch.equal(theta0[f"backbone.{k}"], v) for k, v in fresh.items())
    assert notes["wise/theta0/head"].startswith("frozen-features logistic regression on train (C=")
    mixed = {
        a: {k: (1 - a) * theta0[k] + a * v if v.is_floating_point() else v for k, v in finetuned.items()}
        for a in (0.0, 0.5, 1.0)
    }
    losses = {a: _val_loss_by_hand(module, datamodule, s) for a, s in mixed.items()}
    assert [g["alpha"] for g in metrics["wise/grid"]] == [0.0, 0.5, 1.0]
    assert [g["val/loss"] for g in metrics["wise/grid"]] == pytest.approx(list(losses.values()), rel=1e-5)
    assert metrics["wise/alpha"] == min(losses, key=lambda a: (round(losses[a], 9), -a))
    assert metrics["wise/selection"] == "best val/loss (min) on val over 3 alphas, ties to the larger"
    assert metrics["wise/theta0/backbone"] == "random init (backbone.weights=none), seed 42 as the fit's"

    # the fine-tuned model's own test numbers beside the chosen one's
    fitted = json.loads((run / "metrics.json").read_text())
    assert metrics["finetuned/test/acc"] == pytest.approx(fitted["test/acc"], abs=1e-7)
    assert {"test/acc", "test/loss", "test/f1_macro", "wise/baseline/test/acc"} <= set(metrics)

    # the checkpoint: the interpolated weights, rebuilt by restore, and `tlcli test` gets the same numbers
    loaded, config = restore.load_module(out)
    expected = averaging.interpolate(theta0, finetuned, metrics["wise/alpha"])
    assert all(torch.equal(v, expected[k]) for k, v in loaded.state_dict().items() if k != TEMPERATURE)
    # calibrated like the run: a temperature fitted to the interpolated weights, not the fine-tuned one's
    assert float(loaded.state_dict()[TEMPERATURE]) == pytest.approx(metrics["calibration/temperature"])
    assert config == ckpt["tlcli"]["config"]
    saved = torch.load(out / BEST, map_location="cpu", weights_only=True)
    assert "optimizer_states" not in saved and saved["tlcli"]["averaging"]["wise/alpha"] == metrics["wise/alpha"]
    assert main(["test", f"ckpt={out}", "progress_bar=false", f"hydra.run.dir={tmp_path / 'test'}"]) == 0
    tested = json.loads((tmp_path / "test" / "metrics.json").read_text())
    assert tested["test/acc"] == metrics["test/acc"]
    assert tested["test/loss"] == pytest.approx(metrics["test/loss"], rel=1e-6)
    assert tested["test/ece"] == pytest.approx(metrics["test/ece"], rel=1e-6)
    assert (out / "wise_ft.png").stat().st_size > 1000 and (out / "per_class.json").is_file()
    assert "Val score for each alpha" in (out / "report.html").read_text()


def test_wise_refusals_leave_no_run_dir(sweep, tmp_path, capsys):
    def err(args, code):
        assert main(["wise", *args, f"hydra.run.dir={tmp_path / 'out'}"]) == code
        return " ".join(capsys.readouterr().err.split())

    run = f"ckpt={sweep.dir / '0'}"
    assert "alpha=1.5 must be auto or a number in [0, 1], e.g. alpha=0.5" in err([run, "alpha=1.5"], 2)
    assert "alphas=[] must be a list of numbers in [0, 1], e.g. alphas=[0,0.25,0.5,0.75,1]" in err(
        [run, "alphas=[]"], 2
    )
    nope = tmp_path / "nope"
    assert f"ckpt={nope} does not exist: pass a .ckpt file or the run dir of a `tlcli fit`" in err([f"ckpt={nope}"], 4)
    assert "ckpt is required (it is ??? in the config): set it, e.g. ckpt=VALUE" in err([], 2)
    assert not (tmp_path / "out").exists()


def test_wise_with_a_head_that_is_not_one_linear_layer_interpolates_the_backbone_only(sweep, tmp_path):
    from tlcli.heads import MLPHead

    def mlp(ckpt):
        state = ckpt["state_dict"]
        width = state["head.0.weight"].shape[1]
        for k in [k for k in state if k.startswith("head.")]:
            del state[k]
        torch.manual_seed(0)
        state.update({f"head.{k}": v for k, v in MLPHead(width, 3, hidden=8).state_dict().items()})
        ckpt["tlcli"]["config"]["head"] = {"_target_": "tlcli.heads.MLPHead", "_partial_": True, "hidden": 8}

    _crafted(sweep.dir / "0", tmp_path / "mlp", [], mlp)
    out = tmp_path / "wise"
    assert main(["wise", f"ckpt={tmp_path / 'mlp'}", "alpha=0.5", "accelerator=cpu", f"hydra.run.dir={out}"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["wise/theta0/head"] == (
        "the fine-tuned head: only the backbone is interpolated (the head is not one linear layer)"
    )
    assert metrics["wise/selection"] == "alpha=0.5 given (no search)" and len(metrics["wise/grid"]) == 1
    assert not (out / "wise_ft.png").exists()  # one alpha: nothing to draw
    finetuned, mixed = _state(tmp_path / "mlp"), _state(out)
    torch.manual_seed(42)
    pretrained = trust.build(restore.read(tmp_path / "mlp" / BEST)["tlcli"]["config"]["backbone"]).state_dict()
    for k, v in mixed.items():
        if k.startswith("head."):
            assert torch.equal(v, finetuned[k]), k
        elif k.startswith("backbone.") and v.is_floating_point():
            assert torch.allclose(v, (pretrained[k[9:]] + finetuned[k]) / 2, atol=1e-6), k


def _state(run: Path) -> dict:
    return restore.read(run / BEST)["state_dict"]


def test_greedy_soup_leaves_out_an_ingredient_that_makes_val_worse(sweep, tmp_path):
    out = tmp_path / "greedy"
    assert main(["soup", str(sweep.dir), "accelerator=cpu", f"hydra.run.dir={out}"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["soup/left_out"] == [
        "job 3: no metrics.json (the job failed or has not finished)",
        "job 4: its data split differs from job 0's (data.k_shot=2 vs None): the soup is chosen on one val split, "
        "which must be no ingredient's training data; hold the split fixed (e.g. data.seed=0 while sweeping seed)",
    ]
    ranked = metrics["soup/ingredients"]
    assert [i["job"] for i in ranked][-1] == 2  # the noisy head: the worst val loss
    assert [i["val/loss"] for i in ranked] == sorted(i["val/loss"] for i in ranked)
    steps = metrics["soup/steps"]
    assert [s["job"] for s in steps] == [i["job"] for i in ranked]
    assert steps[0]["val/loss"] == ranked[0]["val/loss"] and steps[0]["kept"]
    last_kept = [s["val/loss"] for s in steps[:-1] if s["kept"]][-1]
    assert steps[-1]["kept"] is False and steps[-1]["val/loss"] > last_kept
    kept = [s["job"] for s in steps if s["kept"]]
    assert metrics["soup/size"] == len(kept) and metrics["best_ingredient/job"] == ranked[0]["job"]
    assert metrics["best_ingredient/test/acc"] == pytest.approx(
        json.loads((sweep.dir / str(ranked[0]["job"]) / "metrics.json").read_text())["test/acc"], abs=1e-7
    )
    states = [_state(sweep.dir / str(j)) for j in kept]
    soup = _state(out)
    assert float(soup.pop(TEMPERATURE)) == pytest.approx(metrics["calibration/temperature"])
    for k, v in soup.items():
        if v.is_floating_point():
            assert torch.equal(v, (sum(s[k].double() for s in states) / len(states)).to(v.dtype)), k
        else:
            assert torch.equal(v, states[0][k]), k
    module, _ = restore.load_module(out)  # loads like any run
    assert module.class_names == ["cat", "dog", "fox"]
    assert "Ingredients (best first)" in (out / "report.html").read_text()


def test_uniform_soup_of_two_runs_is_their_mean(sweep, tmp_path):
    two = tmp_path / "two"
    two.mkdir()
    for job in ("0", "1"):
        (two / job).symlink_to(sweep.dir / job)
    out = tmp_path / "uniform"
    assert main(["soup", str(two), "method=uniform", "accelerator=cpu", f"hydra.run.dir={out}"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["soup/size"] == 2 and metrics["soup/left_out"] == []
    best = metrics["best_ingredient/job"]
    a, b, soup = _state(sweep.dir / "0"), _state(sweep.dir / "1"), _state(out)
    assert float(soup.pop(TEMPERATURE)) == pytest.approx(metrics["calibration/temperature"])
    for k, v in soup.items():
        expected = (a[k] + b[k]) / 2 if v.is_floating_point() else (a, b)[best][k]
        assert torch.equal(v, expected), k
    assert metrics["test/acc"] == pytest.approx(json.loads((out / "per_class.json").read_text())["summary"]["accuracy"])


def test_soup_refusals(sweep, tmp_path, capsys):
    def err(sweep_dir, code, *args):
        try:  # refused before Hydra starts: main returns the code; inside the verb: SystemExit
            got = main(["soup", str(sweep_dir), *args, f"hydra.run.dir={tmp_path / 'out'}"])
        except SystemExit as exc:
            got = exc.code
        assert got == code
        return " ".join(capsys.readouterr().err.split())

    usage = "usage: tlcli soup SWEEP_DIR [method=greedy|uniform] (the directory of a `tlcli fit -m ...` sweep)"
    run = sweep.dir / "0"
    assert (
        f"{run} is a single run dir (it has .hydra/ itself): expected the job dirs 0/, 1/, ... of a `tlcli fit -m` "
        f"sweep, each holding .hydra/overrides.yaml and checkpoints/best.ckpt (for one run use `tlcli wise "
        f"ckpt=RUN_DIR`). {usage}" in err(run, 2)
    )
    assert f"{tmp_path / 'missing'} does not exist. {usage}" in err(tmp_path / "missing", 2)
    assert "method=bogus must be greedy or uniform, e.g. method=greedy" in err(sweep.dir, 2, "method=bogus")
    assert not (tmp_path / "out").exists()  # refused before Hydra made the run dir

    one = tmp_path / "one"
    one.mkdir()
    for job in ("0", "3"):
        (one / job).symlink_to(sweep.dir / job)
    message = err(one, 2)
    assert (
        f"{one}: 1 compatible finished run(s), a soup needs at least 2: rerun the failed jobs, or sweep several "
        "runs of one setup (e.g. tlcli fit -m optimizer.lr=1e-4,3e-4,1e-3) and soup that sweep" in message
    )
    assert "job 3: no metrics.json (the job failed or has not finished)" in message

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "0").symlink_to(run)

    def vit(ckpt):
        ckpt["tlcli"]["config"]["backbone"]["name"] = "test_vit"

    _crafted(run, mixed / "1", ["backbone=test_vit"], vit)
    assert (
        f"{mixed}: the runs differ in backbone architecture (job 0: TimmBackbone test_resnet (pooled features); "
        "job 1: TimmBackbone test_vit (pooled features)): a soup averages the weights of one architecture; sweep "
        "one backbone at a time (tlcli fit -m backbone=NAME optimizer.lr=...) and soup each sweep" in err(mixed, 2)
    )


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["DIR", "method=uniform"], ["sweep=DIR", "method=uniform"]),
        (["method=uniform", "DIR"], ["method=uniform", "sweep=DIR"]),
        (["--cfg", "job", "DIR"], ["--cfg", "job", "sweep=DIR"]),
        (["sweep=DIR"], ["sweep=DIR"]),
    ],
)
def test_soup_takes_the_sweep_dir_as_a_bare_argument(args, expected):
    from tlcli.cli import _positional

    assert _positional("soup", args) == expected
    assert _positional("wise", ["DIR"]) == ["DIR"]  # other verbs: Hydra's own error for a bare value


def test_wise_and_soup_test_with_tta_as_tlcli_test_does_and_choose_on_plain_val(sweep, tmp_path, capsys):
    run = sweep.dir / "0"
    plain, flip = tmp_path / "plain", tmp_path / "flip"
    for out, extra in ((plain, []), (flip, ["tta=flip"])):
        assert main(["wise", f"ckpt={run}", "alphas=[0,0.5,1]", "accelerator=cpu", *extra, f"hydra.run.dir={out}"]) == 0
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (plain, flip))
    assert (b["tta"], b["tta/views"]) == ("flip", 2) and "tta" not in a
    assert b["wise/grid"] == a["wise/grid"] and b["wise/alpha"] == a["wise/alpha"]  # val has no views
    assert b["test/loss"] != a["test/loss"]  # the test has them
    assert main(["test", f"ckpt={flip}", "tta=flip", "progress_bar=false", f"hydra.run.dir={tmp_path / 't'}"]) == 0
    tested = json.loads((tmp_path / "t" / "metrics.json").read_text())
    assert tested["test/acc"] == b["test/acc"] and tested["test/loss"] == pytest.approx(b["test/loss"], rel=1e-6)
    fitted_flip = tmp_path / "fitted"
    assert main(["test", f"ckpt={run}", "tta=flip", "progress_bar=false", f"hydra.run.dir={fitted_flip}"]) == 0
    fine = json.loads((fitted_flip / "metrics.json").read_text())
    assert b["finetuned/test/loss"] == pytest.approx(fine["test/loss"], rel=1e-6)  # compared like with like

    soup = tmp_path / "soup"
    assert main(["soup", str(sweep.dir), "tta=flip", "accelerator=cpu", f"hydra.run.dir={soup}"]) == 0
    assert json.loads((soup / "metrics.json").read_text())["tta"] == "flip"
    assert main(["soup", str(sweep.dir), "tta=blur", f"hydra.run.dir={tmp_path / 'bad'}"]) == 2
    assert "tta=blur must be null (off), flip, crops or [flip,crops], e.g. tta=flip" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
