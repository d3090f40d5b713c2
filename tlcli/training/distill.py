"""Knowledge distillation: a trained tlcli model (the teacher) guides the student's training.

loss = (1 - alpha) * hard-label loss + alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))

The T^2 factor (Hinton et al., 2015) keeps the soft term's gradients on the same scale
as the hard term's whatever the temperature.

Inputs: the teacher sees the student's batch, converted when the two were trained on
different inputs. Images are un-normalised with the student's mean/std, resized to the
teacher's input size and re-normalised with the teacher's mean/std (the teacher sees the
student's crop, augmentations included). Token batches are decoded with the student's
tokenizer and re-encoded with the teacher's when the vocabularies differ (lossy where one
tokenizer lower-cases or drops characters the other keeps).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning.fabric.utilities.apply_func import move_data_to_device
from torch import nn

from tlcli.errors import ConfigError
from tlcli.restore import load_module

log = logging.getLogger(__name__)


def soft_term(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(softmax(teacher / T) || softmax(student / T)), averaged over the batch."""
    return F.kl_div(
        F.log_softmax(student_logits.float() / temperature, dim=-1),
        F.log_softmax(teacher_logits.float() / temperature, dim=-1),
        log_target=True,
        reduction="batchmean",
    )


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    hard_loss: torch.Tensor,
    alpha: float,
    temperature: float,
) -> torch.Tensor:
    kl = soft_term(student_logits, teacher_logits, temperature)
    return (1.0 - alpha) * hard_loss + alpha * temperature**2 * kl


class Distiller:
    """The teacher and the loss that mixes in its soft labels.

    Deliberately not an nn.Module: held as an attribute of the student's TransferModule it
    stays out of the student's state_dict, parameters(), optimizer and train()/eval()
    switches. The teacher is frozen (requires_grad=False), in eval mode, runs under
    no_grad, and follows the student's device on the first batch.

    teacher: a checkpoint or run dir (loaded weights-only with tlcli.restore.load_module),
    or a TransferModule. class_names: the student's; the teacher must know the same
    classes (its logits are reordered when the order differs).
    """

    def __init__(
        self,
        teacher: str | Path | nn.Module,
        alpha: float,
        temperature: float,
        class_names: Sequence[str],
        data_config: dict[str, Any],
        task=None,
    ):
        problems = []
        if not 0.0 <= float(alpha) <= 1.0:
            problems.append(f"distill.alpha={alpha} must be in [0, 1] (the weight of the teacher's soft labels)")
        if not float(temperature) > 0.0:
            problems.append(f"distill.temperature={temperature} must be > 0 (e.g. 4.0)")
        if task is not None and not task.single_label:
            problems.append("distill.teacher needs single-label classification (task=cls); set distill.teacher=null")
        if problems:
            raise ConfigError(problems)
        self.alpha, self.temperature = float(alpha), float(temperature)
        if isinstance(teacher, nn.Module):
            self.teacher, source = teacher, "the given module"
        else:
            self.teacher, _ = load_module(teacher, key="distill.teacher")
            source = str(teacher)
        if not self.teacher.task.single_label:
            kind = "multi-label" if self.teacher.task.labels == "multi" else type(self.teacher.task).__name__
            raise ConfigError(f"distill.teacher={source} is a {kind} model: distil from a task=cls teacher")
        self.teacher.eval().requires_grad_(False)
        self.order = _class_order(list(self.teacher.class_names), list(class_names))
        self.adapt = _input_adapter(self.teacher, data_config)
        self.last_kl: torch.Tensor | None = None  # the soft term of the last batch, for logging
        log.info("distilling from %s (alpha %.2f, temperature %.1f)", source, self.alpha, self.temperature)

    @torch.no_grad()
    def teacher_logits(self, x: Any) -> torch.Tensor:
        device = _device_of(x)
        if _device_of(self.teacher) != device:
            self.teacher.to(device)
        return self.teacher(self.adapt(x, device))[:, self.order]

    def loss(self, student_logits: torch.Tensor, x: Any, y: torch.Tensor, hard_loss: torch.Tensor) -> torch.Tensor:
        """The training loss with the teacher's soft labels mixed in (y: unused, kept for a uniform hook)."""
        if self.alpha == 0.0:
            return hard_loss  # no teacher forward when it has no weight
        kl = soft_term(student_logits, self.teacher_logits(x), self.temperature)
        self.last_kl = kl.detach()
        return (1.0 - self.alpha) * hard_loss + self.alpha * self.temperature**2 * kl


def _class_order(teacher: list[str], student: list[str]) -> list[int]:
    """Teacher logit index for each student class, in the student's order."""
    if set(teacher) != set(student) or len(teacher) != len(student):
        missing = [c for c in student if c not in teacher]
        extra = [c for c in teacher if c not in student]
        parts = ([f"the teacher lacks {', '.join(missing[:8])}"] if missing else []) + (
            [f"the teacher has extra {', '.join(extra[:8])}"] if extra else []
        )
        raise ConfigError(
            f"distill.teacher was trained on other classes than the data ({'; '.join(parts) or 'duplicates'}): "
            "distil from a teacher fitted on the same class names"
        )
    return [teacher.index(c) for c in student]


def _device_of(x: Any) -> torch.device:
    if isinstance(x, nn.Module):
        return next(x.parameters()).device
    if isinstance(x, dict):
        x = next(iter(x.values()))
    return x.device


def _input_adapter(teacher: nn.Module, student_cfg: dict[str, Any]):
    """A function (x, device) -> the teacher's input for the student's batch x."""
    teacher_cfg = teacher.backbone.data_config()
    if teacher_cfg["modality"] != student_cfg["modality"]:
        raise ConfigError(
            f"distill.teacher takes {teacher_cfg['modality']} inputs but the student's backbone takes "
            f"{student_cfg['modality']}: distil from a teacher of the same modality"
        )
    if student_cfg["modality"] == "text":
        return _TokenAdapter(student_cfg, teacher_cfg)
    return _ImageAdapter(student_cfg, teacher_cfg, _teacher_image_size(teacher, teacher_cfg))


def _teacher_image_size(teacher: nn.Module, teacher_cfg: dict[str, Any]) -> tuple[int, int]:
    """The size the teacher was trained at: its run's data.image_size, else its backbone's."""
    data = teacher.config["data"] if "data" in teacher.config else {}
    size = data["image_size"] if "image_size" in data else None
    if size is not None:
        return int(size), int(size)
    return int(teacher_cfg["input_size"][1]), int(teacher_cfg["input_size"][2])


class _ImageAdapter:
    def __init__(self, student_cfg: dict[str, Any], teacher_cfg: dict[str, Any], size: tuple[int, int]):
        self.size = size
        self.s_mean, self.s_std = _channels(student_cfg["mean"]), _channels(student_cfg["std"])
        self.t_mean, self.t_std = _channels(teacher_cfg["mean"]), _channels(teacher_cfg["std"])
        self.same_norm = torch.equal(self.s_mean, self.t_mean) and torch.equal(self.s_std, self.t_std)

    def __call__(self, x: Any, device: torch.device) -> torch.Tensor:
        if not (isinstance(x, torch.Tensor) and x.ndim == 4):
            raise ConfigError(
                "distill.teacher needs the image batches themselves, not cached features: set data.feature_cache=false"
            )
        x = x.float()
        if not self.same_norm:
            x = (x * self.s_std.to(device) + self.s_mean.to(device) - self.t_mean.to(device)) / self.t_std.to(device)
        if tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False, antialias=True)
        return x


def _channels(values) -> torch.Tensor:
    return torch.tensor([float(v) for v in values]).view(1, -1, 1, 1)


class _TokenAdapter:
    def __init__(self, student_cfg: dict[str, Any], teacher_cfg: dict[str, Any]):
        self.student_tok, self.teacher_tok = student_cfg["tokenizer"], teacher_cfg["tokenizer"]
        self.max_length = teacher_cfg["max_length"]
        self.same = self.student_tok.get_vocab() == self.teacher_tok.get_vocab()
        if not self.same:
            log.info("distill: the teacher uses another tokenizer; batches are decoded and re-encoded for it")

    def __call__(self, x: Any, device: torch.device) -> dict[str, torch.Tensor]:
        if not isinstance(x, dict):
            raise ConfigError(
                "distill.teacher needs the token batches themselves, not cached features: set data.feature_cache=false"
            )
        if self.same:
            return x
        texts = self.student_tok.batch_decode(x["input_ids"], skip_special_tokens=True)
        enc = self.teacher_tok(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        return move_data_to_device(dict(enc), device)
