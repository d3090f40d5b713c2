"""data.bucket_by_length: batches of texts of similar length, seeded and resumable like the plain order."""

from __future__ import annotations

import numpy as np

from tests.unit.test_data import IMAGE_CFG, csv_dm, raises, text_cfg, write_csv  # noqa: F401 - text_cfg: fixture
from tlcli.errors import ConfigError
from tlcli.training.seeding import BUCKET_BATCHES, EpochSeededSampler, bucketed


def test_bucketed_order_groups_lengths_and_keeps_every_sample_once():
    rng = np.random.default_rng(0)
    n, bs = 1010, 8  # 3 chunks (400 + 400 + 210): the last ends in a partial batch of 2
    lengths = rng.integers(1, 200, size=n)
    order = rng.permutation(n).tolist()
    out = bucketed(order, lengths, bs, seed=1)
    assert sorted(out) == list(range(n))
    # within each chunk: the same samples as the shuffled order, batches of near-equal length
    chunk = bs * BUCKET_BATCHES
    for start in range(0, n, chunk):
        assert sorted(out[start : start + chunk]) == sorted(order[start : start + chunk])
    batches = [out[i : i + bs] for i in range(0, n, bs)]
    spread = np.mean([np.ptp(lengths[b]) for b in batches[:-1]])
    random_spread = np.mean([np.ptp(lengths[order[i : i + bs]]) for i in range(0, n - bs, bs)])
    assert spread < random_spread / 10  # measured: about 4 vs 150 tokens
    assert len(batches[-1]) == 2 and batches[-1] == out[-2:]  # the partial batch stays last
    # batches are not served shortest-first: the chunk's batch order is shuffled
    first_chunk_max = [lengths[b].max() for b in batches[:BUCKET_BATCHES]]
    assert first_chunk_max != sorted(first_chunk_max)
    assert bucketed(order, lengths, bs, seed=1) == out and bucketed(order, lengths, bs, seed=2) != out


def test_sampler_resumed_mid_epoch_continues_the_same_bucketed_order():
    lengths = np.arange(100) % 17
    full = [i for i, _ in EpochSeededSampler(100, seed=3, epoch=2, lengths=lengths, batch_size=4)]
    resumed = [i for i, _ in EpochSeededSampler(100, seed=3, epoch=2, skip=36, lengths=lengths, batch_size=4)]
    assert resumed == full[36:]
    plain = [i for i, _ in EpochSeededSampler(100, seed=3, epoch=2)]
    assert sorted(full) == sorted(plain) and full != plain


def test_text_batches_pad_less_with_bucketing(tmp_path, text_cfg):  # noqa: F811
    words = "alpha beta gamma delta epsilon zeta eta theta".split()
    rows = [f"{' '.join(words[: 1 + i % 6])},{i % 2}" for i in range(64)]
    train = write_csv(tmp_path / "t.csv", "text,label", rows)

    def cells(bucket: bool) -> tuple[int, list[int]]:
        dm = csv_dm(train, val_csv=str(train), data_config=text_cfg, batch_size=8, bucket_by_length=bucket)
        dm.setup()
        batches = list(dm.train_dataloader())
        seen = sorted(int(y) for _, ys in batches for y in ys)
        return sum(x["input_ids"].numel() for x, _ in batches), seen

    plain, plain_seen = cells(False)
    bucketed_cells, bucketed_seen = cells(True)
    assert bucketed_seen == plain_seen  # the same samples, only grouped
    assert bucketed_cells < 0.8 * plain


def test_bucketing_image_data_is_refused(tmp_path):
    train = write_csv(tmp_path / "t.csv", "image,label", ["a.png,0"])
    assert raises(ConfigError, lambda: csv_dm(train, bucket_by_length=True).setup()) == [
        "data.bucket_by_length=true groups texts by token count, but this data is images: drop data.bucket_by_length"
    ]
