"""Knowledge distillation: the loss by hand, alpha=0 is plain CE, a frozen teacher outside the student, errors."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from tests.conftest import TINY, compose_fit, make_imagefolder
from tlcli.backbones.timm import TimmBackbone
from tlcli.data import ImageFolderDataModule
from tlcli.errors import ConfigError
from tlcli.finetune.full import Full
from tlcli.heads import LinearHead
from tlcli.module import TransferModule
from tlcli.schedules import WarmupCosine
from tlcli.tasks import Classification, MultiLabel
from tlcli.training.distill import Distiller, kd_loss

CLASSES = ["cat", "dog", "fox"]
WIRED = "distill" in Path(__file__).parents[2].joinpath("conf", "fit.yaml").read_text()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_imagefolder(tmp_path_factory.mktemp("distill"), {"train": 6, "val": 2, "test": 2})


@pytest.fixture(scope="module")
def teacher_dir(folder, tmp_path_factory):
    """A tlcli run dir: test_resnet at 32 px, fitted for one epoch on the three classes."""
    from tlcli.commands.fit import fit

    run_dir = tmp_path_factory.mktemp("teacher")
    fit(compose_fit([*TINY, "trainer.max_epochs=1", "data=imagefolder", f"data.root={folder}"], run_dir))
    return run_dir


def student_parts(folder):
    torch.manual_seed(1)
    backbone = TimmBackbone("test_resnet", weights="none")
    dm = ImageFolderDataModule(
        str(folder), num_workers=0, batch_size=6, image_size=32, augment=False, data_config=backbone.data_config()
    )
    dm.setup("fit")
    return backbone, dm


class Student(TransferModule):
    """TransferModule.training_step with the distillation hook the s2 report proposes for module.py."""

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        loss = self.task.loss(logits, y)
        if self.distiller is not None:
            loss = self.distiller.loss(logits, x, y, loss)
        return loss


def test_loss_on_a_hand_checked_case():
    # T = 2: teacher logits (2 ln 3, 0) / T -> softmax (3/4, 1/4); uniform student -> (1/2, 1/2)
    teacher = torch.tensor([[2 * math.log(3.0), 0.0]])
    student = torch.zeros(1, 2, requires_grad=True)
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)  # 0.1308
    total = kd_loss(student, teacher, torch.tensor(1.0), alpha=0.5, temperature=2.0)
    assert total.item() == pytest.approx(0.5 * 1.0 + 0.5 * 2.0**2 * kl, abs=1e-6)  # 0.7616
    total.backward()
    # d/ds of alpha * T^2 * KL = alpha * T * (p_s - p_t): (0.5 * 2 * (0.5 - 0.75), ...) = (-0.25, 0.25)
    torch.testing.assert_close(student.grad, torch.tensor([[-0.25, 0.25]]))


def test_alpha_zero_is_plain_cross_entropy_and_alpha_one_is_pure_soft_labels(folder, teacher_dir):
    backbone, dm = student_parts(folder)
    x, y = next(iter(dm.train_dataloader()))
    logits = torch.randn(len(y), 3)
    ce = F.cross_entropy(logits, y)
    plain = Distiller(teacher_dir, alpha=0.0, temperature=4.0, class_names=CLASSES, data_config=backbone.data_config())
    assert torch.equal(plain.loss(logits, x, y, ce), ce)
    assert torch.equal(kd_loss(logits, torch.randn(len(y), 3), ce, alpha=0.0, temperature=4.0), ce)
    soft = Distiller(teacher_dir, alpha=1.0, temperature=1.0, class_names=CLASSES, data_config=backbone.data_config())
    teacher_logits = soft.teacher_logits(x)
    assert soft.loss(teacher_logits, x, y, ce).item() == pytest.approx(0.0, abs=1e-6)  # student == teacher


def test_teacher_stays_frozen_outside_the_student(folder, teacher_dir):
    backbone, dm = student_parts(folder)
    distiller = Distiller(
        teacher_dir, alpha=0.5, temperature=4.0, class_names=dm.class_names, data_config=backbone.data_config()
    )
    teacher = distiller.teacher
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    task = Classification()
    task.build(3, dm.label_counts())
    student = Student(
        backbone=backbone,
        head=LinearHead(backbone.num_features, 3),
        task=task,
        strategy=Full(),
        optimizer=lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9),
        schedule=WarmupCosine(warmup_epochs=0),
        class_names=dm.class_names,
    )
    student.distiller = distiller
    student_before = {k: v.clone() for k, v in student.state_dict().items()}
    trainer = L.Trainer(
        max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    trainer.fit(student, datamodule=dm)

    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())  # BN running stats too
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert not teacher.training and distiller.last_kl is not None and distiller.last_kl > 0
    teacher_ids = {id(p) for p in teacher.parameters()}
    in_optimizer = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert not teacher_ids & in_optimizer and not teacher_ids & {id(p) for p in student.parameters()}
    assert list(student.state_dict()) == list(student_before)  # no teacher.* keys in the student's checkpoint
    assert any(not torch.equal(v, student_before[k]) for k, v in student.state_dict().items())


def test_classes_must_match_and_a_different_order_is_mapped(folder, teacher_dir):
    backbone, dm = student_parts(folder)
    data_config = backbone.data_config()
    with pytest.raises(ConfigError) as info:
        Distiller(teacher_dir, 0.5, 4.0, class_names=["cat", "dog", "wolf"], data_config=data_config)
    assert info.value.problems == [
        "distill.teacher was trained on other classes than the data (the teacher lacks wolf; the teacher has "
        "extra fox): distil from a teacher fitted on the same class names"
    ]
    x, _ = next(iter(dm.train_dataloader()))
    same = Distiller(teacher_dir, 0.5, 4.0, class_names=CLASSES, data_config=data_config)
    shuffled = Distiller(teacher_dir, 0.5, 4.0, class_names=["fox", "cat", "dog"], data_config=data_config)
    torch.testing.assert_close(shuffled.teacher_logits(x), same.teacher_logits(x)[:, [2, 0, 1]])


def test_settings_and_modality_errors(teacher_dir):
    image_cfg = TimmBackbone("test_resnet", weights="none").data_config()
    with pytest.raises(ConfigError) as info:
        Distiller(teacher_dir, 1.5, 0.0, class_names=CLASSES, data_config=image_cfg, task=MultiLabel())
    assert info.value.problems == [
        "distill.alpha=1.5 must be in [0, 1] (the weight of the teacher's soft labels)",
        "distill.temperature=0.0 must be > 0 (e.g. 4.0)",
        "distill.teacher needs single-label classification (task=cls); set distill.teacher=null",
    ]
    with pytest.raises(ConfigError) as info:
        Distiller(teacher_dir, 0.5, 4.0, CLASSES, data_config={"modality": "text", "tokenizer": None, "max_length": 8})
    assert info.value.problems == [
        "distill.teacher takes image inputs but the student's backbone takes text: "
        "distil from a teacher of the same modality"
    ]
    distiller = Distiller(teacher_dir, 0.5, 4.0, CLASSES, data_config=image_cfg)
    with pytest.raises(ConfigError, match="needs the image batches themselves, not cached features"):
        distiller.loss(torch.zeros(2, 3), torch.zeros(2, 8), torch.zeros(2, dtype=torch.long), torch.tensor(1.0))


def test_teacher_trained_on_other_inputs_gets_its_own_normalisation_and_size(teacher_dir):
    """A student at 24 px with mean 0 / std 1; the teacher was trained at 32 px with its own mean/std."""
    distiller = Distiller(
        teacher_dir,
        0.5,
        4.0,
        CLASSES,
        data_config={**TimmBackbone("test_resnet", weights="none").data_config(), "mean": (0, 0, 0), "std": (1, 1, 1)},
    )
    raw = torch.rand(2, 3, 24, 24)
    cfg = distiller.teacher.backbone.data_config()
    mean, std = torch.tensor(cfg["mean"]).view(1, 3, 1, 1), torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    want = F.interpolate((raw - mean) / std, size=(32, 32), mode="bilinear", antialias=True)
    torch.testing.assert_close(distiller.adapt(raw, torch.device("cpu")), want, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not WIRED, reason="needs the distill node in conf/fit.yaml and the fit.py + module.py wiring")
def test_fit_with_a_teacher_run_dir(folder, teacher_dir, tmp_path):
    from tlcli.commands.fit import fit

    run = tmp_path / "student"
    overrides = [*TINY, "trainer.max_epochs=1", "data=imagefolder", f"data.root={folder}"]
    metrics = fit(compose_fit([*overrides, f"distill.teacher={teacher_dir}", "distill.alpha=0.7"], run))
    assert 0.0 <= metrics["test/acc"] <= 1.0
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert not [k for k in ckpt["state_dict"] if "teacher" in k or "distill" in k]
    with open(run / "logs" / "metrics.csv") as f:
        assert "train/distill_kl" in next(csv.reader(f))
