"""Framework overhead: tlcli's training / inference throughput vs a hand-written PyTorch loop.

    .venv/bin/python -m bench.overhead                      # every workload, 5 rounds, write results
    .venv/bin/python -m bench.overhead --only lite0-64 --rounds 3 --no-write
    .venv/bin/python -m bench.overhead --only latency       # CLI start-up times only

The tlcli side is the real thing: `conf/fit.yaml` composed with Hydra and handed to
`tlcli.commands.fit.fit` (the function `tlcli fit` calls), with the default callbacks, CSV logger,
cosine LR schedule stepped per batch and param groups. Only two keys are swapped in:
`data` points at `BatchesDataModule`, which serves batches materialised once from the
real datamodule (so neither side pays for image decoding or tokenising), and a
`StepTimer` callback reads the clock after every training batch. The plain side builds
the same architecture by hand and runs forward, cross-entropy, backward, AdamW step on
the very same batch objects. Both run in this process, with the same thread count,
num_workers=0, and are interleaved round by round (alternating which goes first);
the ratio is taken per round and the median reported. Steady state: the first
`warmup` steps of each side are not timed.

Inference: `tlcli.commands.predict._infer` (the loop `tlcli predict` runs, on the trained
module in eval mode, progress bar on) vs `model.eval()` + forward under inference_mode.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import lightning as L  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


class Clock(tuple):
    """(wall seconds, CPU seconds of this thread). CPU time barely moves when other processes
    compete for the cores (with 1 torch thread all the work runs on the calling thread);
    wall time is what a user waits for. Subtracting two gives the interval."""

    def __sub__(self, other):
        return Clock((self[0] - other[0], self[1] - other[1]))


def clock() -> Clock:
    return Clock((time.perf_counter(), time.thread_time()))


# key -> {"train": [(x, y), ...], "val": [...], "class_names": [...]}: filled before fit runs
BATCHES: dict[str, dict[str, Any]] = {}
# key -> what StepTimer saw: batch-end clock readings, and the trained module
TIMINGS: dict[str, dict[str, Any]] = {}


# ---------------------------------------------------------------- pieces plugged into tlcli's config
class _Listed(Dataset):
    """Each item is a whole, already collated batch (use with DataLoader(batch_size=None))."""

    def __init__(self, batches: list):
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int):
        return self.batches[i]


def batch_loader(batches: list) -> DataLoader:
    return DataLoader(_Listed(batches), batch_size=None, shuffle=False, num_workers=0)


class BatchesDataModule(L.LightningDataModule):
    """A datamodule over batches held in memory (BATCHES[key]), with what tlcli.commands.fit.fit reads."""

    def __init__(self, key: str, data_config: dict | None = None):
        super().__init__()
        record = BATCHES[key]
        self.key, self.class_names = key, list(record["class_names"])
        self.multilabel, self.test_split, self.feature_cache = False, "val", False

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def label_counts(self) -> list[int]:
        ys = torch.cat([y for _, y in BATCHES[self.key]["train"]])
        return torch.bincount(ys, minlength=self.num_classes).tolist()

    def train_dataloader(self) -> DataLoader:
        return batch_loader(BATCHES[self.key]["train"])

    def val_dataloader(self) -> DataLoader:
        return batch_loader(BATCHES[self.key]["val"])

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()


class StepTimer(L.Callback):
    """Clock readings after every training batch; with a partner (PARTNERS[key], the plain loop)
    one plain step runs right after each tlcli step on the same batch, so the two alternate
    step by step and share whatever else the machine is doing at that moment."""

    def __init__(self, key: str):
        self.key = key

    def on_train_start(self, trainer, pl_module) -> None:
        TIMINGS[self.key] = {"tlcli": [], "plain": [], "module": pl_module}
        self._resumed = clock()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        done = clock()
        rec = TIMINGS[self.key]
        rec["tlcli"].append(done - self._resumed)  # this tlcli step, its data fetch and every hook
        partner = PARTNERS.get(self.key)
        if partner is not None:
            rec["plain"].append(partner.step(batch))
        self._resumed = clock()


# key -> PlainStepper run in lock-step with tlcli's training steps
PARTNERS: dict[str, Any] = {}


# ---------------------------------------------------------------- config and data
def compose(overrides: list[str], run_dir: Path):
    """conf/fit.yaml composed as `tlcli fit` does, ${hydra:runtime.output_dir} = run_dir."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from tlcli.config.compose import _backbone_rewrite
    from tlcli.config.paths import conf_dir
    from tlcli.config.resolvers import register

    register()
    run_dir.mkdir(parents=True, exist_ok=True)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = hydra_compose("fit", overrides=_backbone_rewrite(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


TOPICS = (
    "goal match team score player coach season league ball win",
    "market price stock bank trade money profit share fund rate",
    "rain storm cloud wind snow weather cold sun heat forecast",
    "film movie actor scene music song stage show director story",
)


def write_text_csv(path: Path, n: int = 640, seed: int = 0) -> Path:
    """Synthetic sentences of 6-30 common words (about one token each); class k mixes in its topic."""
    import random

    rng = random.Random(seed)
    words = "the a of and to in is was for on that with as by at from it this be or are an".split()
    lines = ["text,label"]
    for i in range(n):
        label = i % len(TOPICS)
        pool = words + TOPICS[label].split()
        lines.append(" ".join(rng.choice(pool) for _ in range(rng.randint(6, 30))) + f",c{label}")
    path.write_text("\n".join(lines) + "\n")
    return path


def materialise(cfg, n_train: int, n_val: int) -> dict[str, Any]:
    """Batches from the real datamodule of cfg (eval transforms, in order), cycled to n_train."""
    import itertools

    from hydra.utils import instantiate

    backbone = instantiate(cfg.backbone)
    dm = instantiate(cfg.data, data_config=backbone.data_config())
    dm.setup("fit")
    # val loader: the deterministic eval pipeline; the same images/texts a train epoch sees
    loader = dm.split_loader("train", shuffle=False)
    pool = list(itertools.islice(loader, n_train))
    train = [pool[i % len(pool)] for i in range(n_train)]
    val = list(itertools.islice(dm.split_loader("val", shuffle=False), n_val))
    return {"train": train, "val": val, "class_names": dm.class_names}


# ---------------------------------------------------------------- the plain side
class PlainImage(nn.Module):
    def __init__(self, name: str, num_classes: int):
        super().__init__()
        import timm

        self.body = timm.create_model(name, pretrained=False, num_classes=0)
        self.fc = nn.Linear(self.body.num_features, num_classes)

    def forward(self, x):
        return self.fc(self.body(x))


class PlainText(nn.Module):
    """AutoModel + mean pooling over the attention mask + linear."""

    def __init__(self, model_dir: str, num_classes: int):
        super().__init__()
        from transformers import AutoModel

        self.body = AutoModel.from_pretrained(model_dir)
        self.body.pooler = None
        self.fc = nn.Linear(self.body.config.hidden_size, num_classes)

    def forward(self, x):
        h = self.body(input_ids=x["input_ids"], attention_mask=x["attention_mask"]).last_hidden_state
        mask = x["attention_mask"].unsqueeze(-1).to(h.dtype)
        return self.fc((h * mask).sum(1) / mask.sum(1).clamp(min=1e-9))


class PlainStepper:
    """The hand-written loop, one step at a time: forward, cross-entropy, backward, AdamW step."""

    def __init__(self, model: nn.Module, lr: float, weight_decay: float, channels_last: bool = False):
        self.model, self.channels_last = model.train(), channels_last
        self.opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)

    def step(self, batch) -> Clock:
        start = clock()
        x, y = batch
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        self.opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(self.model(x), y)
        loss.backward()
        self.opt.step()
        return clock() - start


class InterleavedLoader:
    """Yields the loader's batches to the tlcli predict loop; before each, runs the plain
    eval forward on it. Times both per batch (tlcli: from yield until it asks for the next)."""

    def __init__(self, loader, model: nn.Module):
        self.loader, self.model = loader, model
        self.tlcli: list[Clock] = []
        self.plain: list[Clock] = []

    def __iter__(self):
        self.model.eval()
        for x, y in self.loader:
            start = clock()
            with torch.inference_mode():
                self.model(x).softmax(-1)
            handed = clock()
            self.plain.append(handed - start)
            yield x, y
            self.tlcli.append(clock() - handed)


# ---------------------------------------------------------------- workloads
WORKLOADS: dict[str, dict[str, Any]] = {
    "lite0-64": {
        "what": "EfficientNet-Lite0 (timm tf_efficientnet_lite0, 4.7 M params), digits at 64 px",
        "overrides": ["backbone=lite0_offline", "data=digits", "data.image_size=64"],
        "batch_size": 32,
        "steps": 10,
        "warmup": 2,
        "plain": lambda n: PlainImage("tf_efficientnet_lite0", n),
    },
    "lite0-224": {
        "what": "EfficientNet-Lite0, digits at 224 px",
        "overrides": ["backbone=lite0_offline", "data=digits", "data.image_size=224"],
        "batch_size": 8,
        "steps": 6,
        "warmup": 2,
        "plain": lambda n: PlainImage("tf_efficientnet_lite0", n),
    },
    "minilm": {
        "what": "all-MiniLM-L6-v2 (22 M params, mean pooling), synthetic 6-30 word texts",
        "overrides": ["backbone=minilm_offline", "data=csv", "data.train_csv={csv}"],
        "batch_size": 32,
        "steps": 12,
        "warmup": 2,
        "plain": lambda n: PlainText(_minilm_dir(), n),
    },
}


def _minilm_dir() -> str:
    from tlcli.backbones import weights as W

    return str(W.minilm_dir())


def tlcli_round(key: str, base: list[str], run_dir: Path) -> dict[str, Any]:
    """One real tlcli.commands.fit.fit: 1 epoch over BATCHES[key], plain steps interleaved (StepTimer)."""
    from omegaconf import open_dict

    from tlcli.commands.fit import fit

    cfg = compose(base, run_dir)
    with open_dict(cfg):
        cfg.data = {"_target_": "bench.overhead.BatchesDataModule", "key": key}
        cfg.callbacks.bench_timer = {"_target_": "bench.overhead.StepTimer", "key": key}
    fit(cfg)
    return TIMINGS.pop(key)


def run_workload(key: str, rounds: int, tmp: Path) -> dict[str, Any]:
    from omegaconf import OmegaConf

    from tlcli.commands.predict import _infer

    w = WORKLOADS[key]
    overrides = [o.format(csv=tmp / "texts.csv") for o in w["overrides"]]
    common = [
        *overrides,
        f"data.batch_size={w['batch_size']}",
        "data.num_workers=0",
        "data.augment=false",
        "trainer.max_epochs=1",
        "+trainer.num_sanity_val_steps=0",
        "test_after_fit=false",
    ]
    cfg = compose(common, tmp / f"{key}-data")
    warm, n = w["warmup"], w["warmup"] + w["steps"]
    BATCHES[key] = materialise(cfg, n, 1)
    opt = OmegaConf.to_container(cfg.optimizer)
    lr, wd = float(opt["lr"]), float(opt.get("weight_decay", 0.01))
    loader = batch_loader(BATCHES[key]["train"])
    samples = sum(len(y) for _, y in BATCHES[key]["train"])
    plain = w["plain"](len(BATCHES[key]["class_names"]))
    med = statistics.median
    rows: dict[str, list[tuple[float, float]]] = {f"{k} {c}": [] for k in ("train", "infer") for c in ("wall", "cpu")}
    for r in range(rounds):
        PARTNERS[key] = PlainStepper(plain, lr, wd)  # a fresh optimizer each round, like the fresh fit
        rec = tlcli_round(key, common, tmp / f"{key}-tlcli-{r}")
        module = rec["module"].eval()
        for timed in (False, True):  # the first pass warms both up
            inter = InterleavedLoader(loader, plain)
            _infer(module, inter, torch.device("cpu"), samples, timed)
        for c, idx in (("wall", 0), ("cpu", 1)):
            # per round: the median step of each side (robust to a step another process disturbed)
            rows[f"train {c}"].append(
                (med(t[idx] for t in rec["tlcli"][warm:]), med(t[idx] for t in rec["plain"][warm:]))
            )
            rows[f"infer {c}"].append((med(t[idx] for t in inter.tlcli), med(t[idx] for t in inter.plain)))
        print(
            f"[{key}] round {r + 1}/{rounds}: "
            + "; ".join(f"{name} tlcli {v[-1][0]:.4f} s plain {v[-1][1]:.4f} s" for name, v in rows.items()),
            flush=True,
        )
    PARTNERS.pop(key)
    out = {"what": w["what"], "batch_size": w["batch_size"], "steps": w["steps"], "warmup": warm, "rows": {}}
    for name, v in rows.items():
        ratios = [p / t for t, p in v]
        out["rows"][name] = {
            "tlcli": med(t for t, _ in v),
            "plain": med(p for _, p in v),
            "ratio": med(ratios),
            "ratios": ratios,
        }
        print(f"[{key}] {name}: ratio {med(ratios):.3f} (per round {', '.join(f'{x:.3f}' for x in ratios)})")
    return out


# ---------------------------------------------------------------- CLI latency
LATENCY_COMMANDS = {
    "tlcli --help": ["--help"],
    "tlcli ls": ["ls"],
    "tlcli cat": ["cat"],
    "tlcli fit --cfg job": ["fit", "--cfg", "job"],
}


def latency(repeats: int) -> dict[str, list[float]]:
    """Wall time of each command as a fresh process, interleaved, `repeats` times each."""
    exe = str(Path(sys.executable).parent / "tlcli")
    times: dict[str, list[float]] = {k: [] for k in LATENCY_COMMANDS}
    for _ in range(repeats):
        for name, args in LATENCY_COMMANDS.items():
            t = time.perf_counter()
            proc = subprocess.run([exe, *args], capture_output=True, text=True, cwd=tempfile.gettempdir())
            times[name].append(time.perf_counter() - t)
            if proc.returncode != 0:
                raise RuntimeError(f"{name} failed: {proc.stderr[-1000:]}")
    return times


# ---------------------------------------------------------------- report
def machine() -> str:
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
        f"Python {platform.python_version()}, torch {torch.__version__}, lightning {L.__version__}, "
        f"{platform.system()}"
    )


def load_note(before: float) -> str:
    return (
        f"1-minute load average {before:.1f} before, {os.getloadavg()[0]:.1f} after "
        "(other processes share the cores: only ratios measured side by side in one run mean anything)"
    )


def markdown(results: dict[str, Any], lat: dict[str, list[float]] | None, args, before: float) -> str:
    cmd = "`.venv/bin/python -m bench.overhead" + "".join(f" {a}" for a in sys.argv[1:]) + "`"
    lines = [
        "# Framework overhead: tlcli vs a plain PyTorch loop",
        "",
        f"Command: {cmd}",
        f"Machine: {machine()}; torch threads {args.threads}; {load_note(before)}",
        "",
    ]
    if lat:
        lines += [
            f"## CLI start-up (fresh process each, median of {len(next(iter(lat.values())))}, target < 0.5 s)",
            "",
            "| command | median s | min s | max s |",
            "|---|---|---|---|",
        ]
        lines += [f"| `{k}` | {statistics.median(v):.3f} | {min(v):.3f} | {max(v):.3f} |" for k, v in lat.items()]
        lines.append("")
    if results:
        lines += [
            "## Steady-state throughput: tlcli as a fraction of the plain loop (target >= 0.95)",
            "",
            "ratio = plain s/step / tlcli s/step, per round from each side's median step, then the median",
            "over rounds. `cpu`: CPU seconds of the main thread (robust to the other processes on the",
            "machine); `wall`: elapsed seconds (what a user waits for; noisy here).",
            "",
            "| workload | batch | timed steps / round | measure | tlcli s | plain s | **ratio** | per round |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for key, r in results.items():
            for name, row in r["rows"].items():
                unit = "step" if name.startswith("train") else "batch"
                lines.append(
                    f"| {key} | {r['batch_size']} | {r['steps']} (after {r['warmup']} warm-up) | {name} "
                    f"(s/{unit}) | {row['tlcli']:.4f} | {row['plain']:.4f} | **{row['ratio']:.3f}** | "
                    + ", ".join(f"{x:.2f}" for x in row["ratios"])
                    + " |"
                )
        lines += [""] + [f"- {key}: {r['what']}" for key, r in results.items()]
        lines += [
            "",
            "tlcli side: `tlcli.commands.fit.fit` on the composed `conf/fit.yaml` (default callbacks incl. the rich",
            "progress bar, CSV logger, per-step cosine LR, decay/no-decay param groups); `data` swapped",
            "for in-memory batches materialised once from the real datamodule. Plain side: the same",
            "architecture built by hand, forward + cross-entropy + backward + AdamW step, run in",
            "lock-step: after each tlcli training step one plain step on the same batch. tlcli's time",
            "per step covers everything between two of its batch ends (data fetch, hooks, logging,",
            "scheduler). Inference: `tlcli.commands.predict._infer` (the `tlcli predict` loop, progress bar on)",
            "on the trained module vs `model.eval()` forward + softmax under `torch.inference_mode()`,",
            "alternating batch by batch, second of two passes.",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", default=None, help=f"latency and/or {', '.join(WORKLOADS)}")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--latency-repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads, the same for both sides")
    parser.add_argument("--no-write", action="store_true", help="print only; keep bench/results as it is")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    before = os.getloadavg()[0]
    chosen = args.only or ["latency", *WORKLOADS]
    lat = None
    if "latency" in chosen:
        lat = latency(args.latency_repeats)
        for k, v in lat.items():
            print(f"[latency] {k}: median {statistics.median(v):.3f} s ({', '.join(f'{x:.2f}' for x in v)})")
    results = {}
    with tempfile.TemporaryDirectory(prefix="tlcli-overhead-") as d:
        tmp = Path(d)
        write_text_csv(tmp / "texts.csv")
        for key in (k for k in chosen if k in WORKLOADS):
            results[key] = run_workload(key, args.rounds, tmp)
    text = markdown(results, lat, args, before)
    print(text)
    if not args.no_write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "overhead.md").write_text(text)
        print(f"wrote {RESULTS / 'overhead.md'}")


if __name__ == "__main__":
    # run as bench.overhead, not __main__: the config's _target_s import bench.overhead, and its
    # BATCHES / TIMINGS must be the ones this run fills
    from bench.overhead import main as _main

    _main()
