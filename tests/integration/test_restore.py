"""Rebuilding a model from a checkpoint: weights-only loading, the target allowlist, clear errors."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import TINY, compose_fit
from tlcli.commands.fit import fit
from tlcli.errors import WeightsError
from tlcli.restore import load_module, read, resolve


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from tests.conftest import make_imagefolder

    tmp = tmp_path_factory.mktemp("restore")
    root = make_imagefolder(tmp / "data")
    cfg = compose_fit([*TINY, "data=imagefolder", f"data.root={root}", "callbacks.progress_bar=null"], tmp / "run")
    fit(cfg)
    return tmp / "run"


def test_run_dir_resolves_to_best_and_rebuilds_the_same_model(trained_run):
    assert resolve(trained_run) == trained_run / "checkpoints" / "best.ckpt"
    module, config = load_module(trained_run)
    ckpt = torch.load(trained_run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    for name, tensor in module.state_dict().items():
        assert torch.equal(tensor, ckpt["state_dict"][name]), name
    assert module.class_names == ["cat", "dog", "fox"]
    assert config["backbone"]["name"] == "test_resnet"
    assert not module.training


def test_truncated_and_empty_checkpoints_get_a_clear_error(trained_run, tmp_path):
    data = (trained_run / "checkpoints" / "best.ckpt").read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match=r"could not be read as a checkpoint .*truncated, corrupt"):
        read(tmp_path / "cut.ckpt")
    (tmp_path / "empty.ckpt").write_bytes(b"")
    with pytest.raises(WeightsError, match=r"is empty \(0 bytes\)"):
        read(tmp_path / "empty.ckpt")
    with pytest.raises(WeightsError, match=r"ckpt=.*nope does not exist"):
        resolve(tmp_path / "nope")
    with pytest.raises(WeightsError, match=r"is a directory without checkpoints/best.ckpt"):
        resolve(tmp_path)


def test_checkpoint_naming_foreign_callables_is_refused_before_instantiation(trained_run, tmp_path):
    ckpt = torch.load(trained_run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    ckpt["tlcli"]["config"]["head"]["_target_"] = "os.system"
    torch.save(ckpt, tmp_path / "evil.ckpt")
    with pytest.raises(WeightsError) as exc:
        load_module(tmp_path / "evil.ckpt")
    assert "refused, a checkpoint is rebuilt only from tlcli's own parts: head._target_: 'os.system'" in str(exc.value)


def test_pickled_objects_are_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    torch.save({"state_dict": {}, "tlcli": Payload()}, tmp_path / "pickle.ckpt")
    with pytest.raises(WeightsError, match="weights-only loading refuses"):
        read(tmp_path / "pickle.ckpt")


def test_a_plain_lightning_checkpoint_is_not_a_tlcli_one(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "plain.ckpt")
    with pytest.raises(WeightsError, match="is not a tlcli checkpoint"):
        read(tmp_path / "plain.ckpt")
