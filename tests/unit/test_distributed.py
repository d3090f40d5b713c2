"""Several processes, each example once: samplers, gather order, metric sync and signals, in one process.

Each rank is simulated by patching `distributed.world()`; the multi-process runs themselves are in
tests/e2e/test_ddp.py (slow).
"""

from __future__ import annotations

import signal
from types import SimpleNamespace

import pytest
import torch
import torchmetrics
from torch.utils.data import DistributedSampler

from tests.conftest import make_imagefolder
from tlcli.errors import ConfigError, DataError
from tlcli.module import MeanLoss
from tlcli.training import distributed
from tlcli.training.callbacks import Preemption
from tlcli.training.seeding import EpochSeededSampler


def as_rank(monkeypatch, world: int, rank: int) -> None:
    monkeypatch.setattr(distributed, "world", lambda: (world, rank))


@pytest.mark.parametrize(("n", "world"), [(9, 2), (10, 3), (7, 4), (12, 2)])
def test_evaluation_shards_hold_every_example_once(monkeypatch, n, world):
    shards = []
    for rank in range(world):
        as_rank(monkeypatch, world, rank)
        shards.append(list(distributed.eval_sampler(range(n))))
    assert sorted(i for s in shards for i in s) == list(range(n))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    # the outputs of each rank, gathered, come back in data order: 1-d labels and 2-d scores alike
    assert distributed.interleave([torch.tensor(s) for s in shards]).tolist() == list(range(n))
    scores = distributed.interleave([torch.tensor(s, dtype=torch.float).repeat(3, 1).T for s in shards])
    assert scores[:, 2].tolist() == list(range(n))
    # what Lightning's own evaluation sampler does: pad with repeats until the split divides evenly
    padded = [i for r in range(world) for i in DistributedSampler(range(n), world, r, shuffle=False)]
    assert len(padded) == -(-n // world) * world


def test_one_process_keeps_the_plain_loader_and_too_small_a_split_is_refused(monkeypatch):
    assert distributed.eval_sampler(range(5)) is None  # no process group
    as_rank(monkeypatch, 4, 0)
    with pytest.raises(DataError, match="has 3 examples but the run has 4 processes"):
        distributed.eval_sampler(range(3))
    with pytest.raises(ValueError, match="not a strided split"):
        distributed.interleave([torch.arange(3), torch.arange(1)])


def test_metrics_summed_over_shards_equal_one_process():
    """What torchmetrics' sync does (sum each state over ranks), against one process on the same
    logits: accuracy, macro-F1 and the mean loss of an odd-sized split with 2 and 3 processes."""
    g = torch.Generator().manual_seed(0)
    n, classes = 11, 3
    logits, y = torch.randn(n, classes, generator=g), torch.randint(0, classes, (n,), generator=g)

    def evaluate(indices: list[int], batch: int = 4):
        acc = torchmetrics.Accuracy(task="multiclass", num_classes=classes)
        f1 = torchmetrics.F1Score(task="multiclass", num_classes=classes, average="macro")
        loss = MeanLoss()
        for k in range(0, len(indices), batch):
            i = indices[k : k + batch]
            acc.update(logits[i], y[i])
            f1.update(logits[i], y[i])
            loss.update(torch.nn.functional.cross_entropy(logits[i], y[i]), len(i))
        return acc, f1, loss

    single = [m.compute() for m in evaluate(list(range(n)))]
    for world in (2, 3):
        ranks = [evaluate(list(range(r, n, world))) for r in range(world)]
        for other in ranks[1:]:
            for mine, theirs in zip(ranks[0], other):
                mine.merge_state(theirs)
        acc, f1, loss = (m.compute() for m in ranks[0])
        assert acc == single[0] and f1 == single[1]  # counts: exact
        assert loss.item() == pytest.approx(single[2].item(), abs=1e-6)  # float sums in another order
    # a repeated example (Lightning's padding) changes the numbers: the bug this guards against
    padded = [m.compute() for m in evaluate([*range(n), 0])]
    assert padded[2] != single[2]


def test_mean_loss_weights_batches_by_size_and_keeps_nan():
    loss = MeanLoss()
    loss.update(torch.tensor(1.0), 3)
    loss.update(torch.tensor(3.0), 1)
    assert loss.compute().item() == 1.5  # (3 * 1 + 1 * 3) / 4, not the mean of batch means (2.0)
    loss.update(torch.tensor(float("nan")), 2)
    assert torch.isnan(loss.compute())  # a diverged evaluation must show


@pytest.mark.parametrize("world", [2, 3])
def test_training_shards_split_one_seeded_order_and_resume_mid_epoch(world):
    n, seed, epoch = 10, 7, 3
    one = [i for i, _ in EpochSeededSampler(n, seed, epoch)]
    shards = [[i for i, _ in EpochSeededSampler(n, seed, epoch, num_replicas=world, rank=r)] for r in range(world)]
    per_rank = -(-n // world)
    assert all(len(s) == per_rank for s in shards)  # as many steps on every rank
    padded = (one * 2)[: per_rank * world]
    assert distributed.interleave([torch.tensor(s) for s in shards]).tolist() == padded
    # resumed after 2 samples per rank (skip counts the whole order): each rank continues its own share
    done = 2 * world
    for r in range(world):
        resumed = [i for i, _ in EpochSeededSampler(n, seed, epoch, skip=done, num_replicas=world, rank=r)]
        assert resumed == shards[r][2:]


def test_datamodule_loaders_shard_under_a_process_group(monkeypatch, tmp_path):
    from tlcli.backbones.timm import TimmBackbone
    from tlcli.data import ImageFolderDataModule

    root = make_imagefolder(tmp_path / "images", {"train": 5, "val": 3, "test": 3})  # 15, 9, 9
    backbone = TimmBackbone("test_resnet", weights="none")
    dm = ImageFolderDataModule(
        str(root), data_config=backbone.data_config(), batch_size=4, num_workers=0, augment=False, image_size=32
    )
    dm.setup("fit")
    seen, trained = [], []
    for rank in range(2):
        as_rank(monkeypatch, 2, rank)
        test = dm.test_dataloader()
        seen += [int(y) for _, ys in test for y in ys]
        train = dm.train_dataloader()
        assert len(train.sampler) == 8 and len(train) == 2  # 15 examples: 8 per rank, padded once
        trained += [i for i, _ in train.sampler]
    assert sorted(seen) == sorted(int(t) for t in dm.samples["test"].targets)  # 9 labels, none twice
    assert sorted(set(trained)) == list(range(15)) and len(trained) == 16


@pytest.mark.parametrize("verb", ["test", "predict"])
def test_test_and_predict_check_their_devices(verb, capsys):
    from tlcli.cli import main

    extra = ["input=x"] if verb == "predict" else []
    assert main([verb, "ckpt=nowhere.ckpt", *extra, "devices=0", "num_nodes=two"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "devices=0 must be a positive integer, e.g. devices=2" in err
    assert "num_nodes=two must be a positive integer, e.g. num_nodes=1" in err


def test_launcher_environment_says_who_is_rank_zero(monkeypatch):
    for key in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID", "WORLD_SIZE", "SLURM_STEP_NUM_TASKS"):
        monkeypatch.delenv(key, raising=False)
    assert distributed.launched_rank_zero() and distributed.launched_world_size() == 1
    monkeypatch.setenv("SLURM_PROCID", "0")  # a batch script, or task 0 of srun
    assert distributed.launched_rank_zero()
    monkeypatch.setenv("SLURM_PROCID", "3")  # srun task 3: LOCAL_RANK/RANK are not set yet
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "8")
    assert not distributed.launched_rank_zero() and distributed.launched_world_size() == 8
    monkeypatch.delenv("SLURM_PROCID")
    monkeypatch.setenv("NODE_RANK", "1")  # Lightning's launcher, local rank 0 of the second node
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert not distributed.launched_rank_zero()
    monkeypatch.setenv("NODE_RANK", "0")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")  # torchrun
    assert distributed.launched_rank_zero() and distributed.launched_world_size() == 2


def test_torchrun_ranks_must_share_a_run_dir(monkeypatch, tmp_path, capsys):
    from tlcli.cli import _other_rank, main

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert main(["fit", "trainer=ddp"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "this process is one of 2 started by torchrun or srun: give them all the same run dir" in err
    distributed.require_shared_run_dir([f"hydra.run.dir={tmp_path}"], multirun=False)
    # rank 1 writes neither .hydra/ nor the log of rank 0
    assert _other_rank("fit", ["a=1"]) == ["a=1", "hydra.output_subdir=null", "hydra.job.name=fit_rank1"]
    with pytest.raises(ConfigError):
        distributed.require_shared_run_dir(["a=1"], multirun=False)
    monkeypatch.setenv("RANK", "0")
    assert _other_rank("fit", ["a=1"]) == ["a=1"]


class FakeTrainer(SimpleNamespace):
    def __init__(self, world_size: int):
        super().__init__(
            world_size=world_size,
            strategy=SimpleNamespace(root_device=torch.device("cpu")),
            _signal_connector=SimpleNamespace(received_sigterm=False),
        )


@pytest.mark.parametrize(("here", "elsewhere", "stops"), [(0, 0, None), (0, 2, "SIGTERM"), (1, 0, "SIGINT")])
def test_ddp_ranks_agree_on_a_signal_before_they_stop(monkeypatch, here, elsewhere, stops):
    """A signal noted by any rank stops every rank after the same batch; none acts on its own."""
    import torch.distributed as dist
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    old = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    trainer, cb = FakeTrainer(world_size=2), Preemption("unused")
    try:
        cb.on_train_start(trainer, None)
        if here:  # this rank's handler only notes the signal
            sig = signal.SIGTERM if here == 2 else signal.SIGINT
            signal.getsignal(sig)(sig, None)
            assert not trainer._signal_connector.received_sigterm
    finally:
        signal.signal(signal.SIGTERM, old[0])
        signal.signal(signal.SIGINT, old[1])

    def all_reduce(t, op):  # the other rank's note, combined as MAX
        t.copy_(torch.maximum(t, torch.tensor([elsewhere])))

    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    cb.on_train_batch_end(trainer, None, None, None, 0)
    assert trainer._signal_connector.received_sigterm is (stops is not None)
    assert cb.together is (stops is not None)
    if stops:  # validation that follows the batch runs to its end, then Lightning stops
        cb.on_validation_start(trainer, None)
        assert not trainer._signal_connector.received_sigterm
        cb.on_validation_end(trainer, None)
        assert trainer._signal_connector.received_sigterm
        trainer.sanity_checking, trainer.validating, trainer.save_checkpoint = False, False, lambda path: None
        cb.on_exception(trainer, None, SIGTERMException())
        assert cb.signal == stops and cb.saved == "unused/last.ckpt"


def test_a_foreign_data_module_with_the_padding_sampler_is_warned_about(monkeypatch, caplog):
    from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
    from torch.utils.data import DataLoader

    monkeypatch.setattr(distributed, "_warned", set())
    trainer = SimpleNamespace(world_size=2, sanity_checking=False, is_global_zero=True)
    ours = DataLoader(range(9), sampler=UnrepeatedDistributedSampler(range(9), 2, 0, shuffle=False))
    distributed.warn_if_padded(trainer, [ours], "test")
    assert not caplog.records
    padded = DataLoader(range(9), sampler=DistributedSampler(range(9), 2, 0, shuffle=False))
    distributed.warn_if_padded(trainer, padded, "test")
    distributed.warn_if_padded(trainer, padded, "test")  # once per stage
    assert [r.getMessage() for r in caplog.records] == [
        "test on 2 processes with a DistributedSampler: it repeats examples to give every process as many, so "
        "the metrics count those twice; serve the loader with tlcli.training.distributed.eval_sampler"
    ]


def test_batches_of_different_widths_concatenate_padded():
    """Rows with a position per token (token_cls): each test or predict batch is as wide as its
    longest sentence; targets are padded with IGNORE_INDEX, scores with 0. Same widths: torch.cat."""
    from tlcli.data.protocol import IGNORE_INDEX as _

    tags = distributed.cat_padded([torch.tensor([[1, 2], [3, _]]), torch.tensor([[4, 5, 6]])], _)
    assert tags.tolist() == [[1, 2, _], [3, _, _], [4, 5, 6]]
    scores = distributed.cat_padded([torch.ones(2, 1, 3), torch.full((1, 2, 3), 0.5)])
    assert scores.shape == (3, 2, 3) and scores[:2, 1].abs().sum() == 0 and (scores[2] == 0.5).all()
    same = [torch.arange(4).reshape(2, 2), torch.arange(2).reshape(1, 2)]
    assert torch.equal(distributed.cat_padded(same), torch.cat(same))


def test_shards_of_different_widths_gather_padded_in_data_order(monkeypatch):
    """Two ranks, one thread each, through a stand-in all_gather with the collective's contract
    (equal shapes on every rank): rank 0 holds examples 0, 2, 4 two words wide, rank 1 examples
    1, 3 three wide; every rank gets all five, three wide, in data order."""
    import threading

    from tlcli.data.protocol import IGNORE_INDEX as _

    world, barrier, local = 2, threading.Barrier(2), threading.local()
    slots: list = [None] * world

    def all_gather(out, tensor):
        slots[local.rank] = tensor.clone()
        barrier.wait()
        for r, t in enumerate(slots):
            out[r].copy_(t)  # raises unless every rank sent the same shape
        barrier.wait()

    monkeypatch.setattr(torch.distributed, "all_gather", all_gather)
    module = SimpleNamespace(trainer=SimpleNamespace(world_size=world), device=torch.device("cpu"))
    shards = [torch.tensor([[0, 0], [2, _], [4, 4]]), torch.tensor([[1, 1, 1], [3, _, _]])]
    got: dict = {}

    def rank(r):
        local.rank = r
        got[r] = distributed.gather_in_order(module, shards[r], _)

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    expected = [[0, 0, _], [1, 1, 1], [2, _, _], [3, _, _], [4, 4, _]]
    assert got[0].tolist() == got[1].tolist() == expected
