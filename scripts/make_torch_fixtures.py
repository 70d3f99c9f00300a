"""Writes the torch.save fixtures the weight-import tests read.

Every file here is made by PyTorch itself (and torchvision's and the benchmarks' own module
definitions), so the tests check our reader against what users actually hold. Run it with a
Python that imports torch and torchvision, from the repository root:

    python3 scripts/make_torch_fixtures.py [--repdistiller DIR]

`--repdistiller` points at a checkout of HobbitLong/RepDistiller (its `models/` package is
imported for the CIFAR ResNet/WRN fixtures). The MMSeg and MMDet fixtures need
mmsegmentation 1.2.2, mmdet 3.3.0, mmengine 0.10.7 and mmcv-lite 2.1.0 importable (mmcv-lite
has no compiled ops; the models here use none). Weights are drawn with a fixed seed and rounded
to multiples of 1/64 so that fp16 copies are exact and the committed files compress well.
Expected outputs are written next to the checkpoints as JSON.
"""

import argparse
import json
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORE = os.path.join(ROOT, "crates", "kd-core", "tests", "fixtures", "torch")


class RunsCode:
    """An object whose unpickling would run a shell command."""

    def __reduce__(self):
        return (os.system, ("touch /tmp/kd-rs-pickle-ran-code",))


PERIOD = 1021  # prime, so a tiled pattern never lines up with a channel stride


def quantise_(module, seed):
    """Gives every float tensor fp16-exact values (multiples of 2^-10) tiled from a short random
    pattern with a per-tensor shift: every filter still differs from every other (a misplaced
    tensor changes the output), and deflate shrinks the files to a fraction of their size."""
    g = torch.Generator().manual_seed(seed)
    pattern = torch.randn(PERIOD, generator=g)
    with torch.no_grad():
        for i, (name, t) in enumerate(module.state_dict().items()):
            if not t.is_floating_point():
                continue
            n = t.numel()
            idx = (torch.arange(n) * 7 + 131 * i) % PERIOD
            u = pattern[idx].view(t.shape)
            if name.endswith("running_var"):
                v = 0.75 + 0.25 * u.abs().clamp(max=2)
            elif name.endswith("running_mean") or name.endswith("bias"):
                v = 0.1 * u
            elif t.dim() <= 1:  # norm weights, FCOS scales
                v = 1.0 + 0.2 * u.clamp(-2, 2)
            else:  # conv / linear weights, He-scaled by fan-in
                v = u * (2.0 / (n // t.shape[0])) ** 0.5
            t.copy_(torch.round(v * 1024) / 1024)


def gzip_file(path):
    """Replaces `path` by `path.gz` (reproducible: no timestamp)."""
    import gzip
    import shutil

    with open(path, "rb") as src, open(path + ".gz", "wb") as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9, mtime=0) as dst:
            shutil.copyfileobj(src, dst)
    os.remove(path)


def save_model_fixture(dirname, name, model, x, container, wrap=None, half=False, outputs=("logits",)):
    """Saves `model`'s state dict (optionally fp16, optionally wrapped in a checkpoint dict) and
    `{"x": x, "logits": model(x)}` as `<name>.out.pt`, then gzips the checkpoint."""
    model.eval()
    with torch.no_grad():
        y = model(x)
        if len(outputs) == 1 and isinstance(y, (tuple, list)):
            y = y[-1] if torch.is_tensor(y[-1]) else y[0]
        ys = dict(zip(outputs, y)) if len(outputs) > 1 else {outputs[0]: y}
    sd = model.state_dict()
    if half:
        sd = {k: (v.half() if v.is_floating_point() else v) for k, v in sd.items()}
    obj = wrap(sd) if wrap else sd
    path = os.path.join(dirname, name + ".pt")
    torch.save(obj, path, _use_new_zipfile_serialization=(container == "zip"))
    gzip_file(path)
    torch.save({"x": x, **ys, "keys": torch.tensor([len(sd)])}, os.path.join(dirname, name + ".out.pt"))
    print(f"{name}: {len(sd)} tensors, {os.path.getsize(path + '.gz')} bytes gzipped")


def classify_fixtures(repdistiller):
    """torchvision ImageNet ResNets and RepDistiller's CIFAR ResNet/WRN, as users hold them."""
    import torchvision

    out = os.path.join(ROOT, "crates", "kd-classify", "tests", "fixtures", "torch")
    os.makedirs(out, exist_ok=True)
    g = torch.Generator().manual_seed(1)
    x224 = torch.randn(2, 3, 64, 64, generator=g)
    for arch, half in [("resnet18", True), ("resnet50", False)]:
        m = getattr(torchvision.models, arch)(num_classes=10)
        quantise_(m, 2)
        save_model_fixture(out, f"torchvision_{arch}", m, x224, "zip", half=half)
    if not repdistiller:
        print("no --repdistiller: CIFAR fixtures left as they are")
        return
    sys.path.insert(0, repdistiller)
    from models import model_dict  # RepDistiller's own definitions

    x32 = torch.randn(2, 3, 32, 32, generator=g)
    # A RepDistiller teacher file: legacy container, weights under "model" (train_teacher.py).
    m = model_dict["resnet8x4"](num_classes=100)
    quantise_(m, 3)
    save_model_fixture(
        out, "repdistiller_resnet8x4", m, x32, "legacy",
        wrap=lambda sd: {"epoch": 240, "model": sd, "accuracy": torch.tensor(73.09), "optimizer": {"state": {}}},
    )
    # A DataParallel-wrapped WRN saved by a newer torch.
    m = model_dict["wrn_16_2"](num_classes=100)
    quantise_(m, 4)
    save_model_fixture(
        out, "repdistiller_wrn_16_2", m, x32, "zip",
        wrap=lambda sd: {"epoch": 240, "model": {"module." + k: v for k, v in sd.items()}, "best_acc": 73.26},
    )


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")


def core_fixtures():
    """Format fixtures: dtypes, views into shared storages, nesting, prefixes, refused globals."""
    os.makedirs(CORE, exist_ok=True)
    base = torch.arange(24, dtype=torch.float32).view(4, 6) / 8
    sd = {
        "f32": base,
        "f32_view": base[1:3, 2:5],  # a strided view into f32's storage
        "f32_t": base.t(),  # non-contiguous, same storage
        "f16": (torch.arange(6, dtype=torch.float32) / 4).half(),
        "bf16": (torch.arange(6, dtype=torch.float32) / 4 - 1).bfloat16(),
        "f64": torch.tensor([[1.5, -2.25]], dtype=torch.float64),
        "i64": torch.tensor([3, -7, 11], dtype=torch.int64),
        "scalar": torch.tensor(42, dtype=torch.int64),
        "empty": torch.zeros(0, 3),
    }
    expected = {k: {"shape": list(v.shape), "values": v.double().flatten().tolist()} for k, v in sd.items()}
    write_json(os.path.join(CORE, "dtypes.json"), expected)
    torch.save(sd, os.path.join(CORE, "dtypes_zip.pt"))
    torch.save(sd, os.path.join(CORE, "dtypes_legacy.pt"), _use_new_zipfile_serialization=False)
    # A training checkpoint: weights nested under "model", DataParallel-prefixed, next to an
    # optimiser state and metadata.
    w = {"module.fc.weight": base[:2].clone(), "module.fc.bias": torch.tensor([0.5, -0.5])}
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1, momentum=0.9)
    ckpt = {"epoch": 240, "model": w, "accuracy": torch.tensor(75.25), "optimizer": opt.state_dict()}
    torch.save(ckpt, os.path.join(CORE, "nested_legacy.pt"), _use_new_zipfile_serialization=False)
    torch.save(ckpt, os.path.join(CORE, "nested_zip.pt"))
    # Two state dicts side by side: ambiguous without --weights-key.
    torch.save({"student": w, "teacher": {"x": torch.ones(1)}}, os.path.join(CORE, "two_dicts.pt"))
    # Weights under an unexpected key name, beside metadata.
    torch.save({"meta": {"note": "x"}, "ema_weights_v2": w}, os.path.join(CORE, "odd_key.pt"))
    # Files that would run code when unpickled by Python.
    torch.save(RunsCode(), os.path.join(CORE, "runs_code.pt"))
    torch.save({"fc.weight": RunsCode(), "fc.bias": torch.ones(2)}, os.path.join(CORE, "runs_code_inside.pt"))
    # A pickle with no tensors at all, and a plain pickle that is not a torch file.
    import pickle

    with open(os.path.join(CORE, "plain.pkl"), "wb") as f:
        pickle.dump({"a": 1}, f, protocol=2)


def openmmlab():
    """Imports MMSeg and MMDet with mmcv-lite: the compiled-ops module they import but these
    models never call is replaced by one whose every function raises."""
    import types

    class NoOps(types.ModuleType):
        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)

            def op(*a, **k):
                raise RuntimeError(f"compiled mmcv op {name} is not available")

            return op

    sys.modules.setdefault("mmcv._ext", NoOps("mmcv._ext"))


class Segmentor(torch.nn.Module):
    """MMSeg's EncoderDecoder tree (`backbone`, `decode_head`, `auxiliary_head`) without its
    data pipeline: logits resized to the input as `encode_decode` does."""

    def __init__(self, backbone, decode_head, auxiliary_head):
        super().__init__()
        self.backbone, self.decode_head, self.auxiliary_head = backbone, decode_head, auxiliary_head

    def forward(self, x):
        from mmseg.models.utils import resize

        feats = self.backbone(x)
        up = lambda y: resize(y, size=x.shape[2:], mode="bilinear", align_corners=False)
        return up(self.decode_head(feats)), up(self.auxiliary_head(feats))


def seg_fixtures():
    """MMSeg PSPNet-R18-d8 and DeepLabV3-R18-d8 (ResNetV1c, FCN auxiliary head)."""
    openmmlab()
    from mmseg.models.backbones import ResNetV1c
    from mmseg.models.decode_heads import ASPPHead, FCNHead, PSPHead

    out = os.path.join(ROOT, "crates", "kd-seg", "tests", "fixtures", "torch")
    os.makedirs(out, exist_ok=True)
    bn = dict(type="BN", requires_grad=True)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(1, 3, 40, 40, generator=g)
    for name, head in [
        ("psp", lambda: PSPHead(in_channels=512, in_index=3, channels=128, pool_scales=(1, 2, 3, 6),
                                dropout_ratio=0.1, num_classes=19, norm_cfg=bn, align_corners=False)),
        ("aspp", lambda: ASPPHead(in_channels=512, in_index=3, channels=128, dilations=(1, 2, 3, 4),
                                  dropout_ratio=0.1, num_classes=19, norm_cfg=bn, align_corners=False)),
        ("fcn", lambda: FCNHead(in_channels=512, in_index=3, channels=128, num_convs=2, concat_input=True,
                                dropout_ratio=0.1, num_classes=19, norm_cfg=bn, align_corners=False)),
    ]:
        backbone = ResNetV1c(depth=18, num_stages=4, out_indices=(0, 1, 2, 3), dilations=(1, 1, 2, 4),
                             strides=(1, 2, 1, 1), norm_cfg=bn, norm_eval=False, style="pytorch",
                             contract_dilation=True)
        aux = FCNHead(in_channels=256, in_index=2, channels=64, num_convs=1, concat_input=False,
                      dropout_ratio=0.1, num_classes=19, norm_cfg=bn, align_corners=False)
        m = Segmentor(backbone, head(), aux)
        quantise_(m, 6)
        # An MMSeg training checkpoint: {'meta', 'state_dict', 'optimizer'}.
        save_model_fixture(
            out, f"mmseg_{name}_r18_d8", m, x, "zip",
            wrap=lambda sd: {"meta": {"mmseg_version": "1.2.2", "CLASSES": ["road"] * 19}, "state_dict": sd,
                             "optimizer": {"state": {}, "param_groups": []}},
            outputs=("logits", "aux_logits"),
        )


class Detector(torch.nn.Module):
    """MMDet's single-stage tree (`backbone`, `neck`, `bbox_head`); outputs flattened per level
    as `[B, sum(H*W), C]` like our detector's."""

    def __init__(self, backbone, neck, bbox_head):
        super().__init__()
        self.backbone, self.neck, self.bbox_head = backbone, neck, bbox_head

    def forward(self, x):
        cls, box, ctr = self.bbox_head(self.neck(self.backbone(x)))
        flat = lambda ys: torch.cat([y.permute(0, 2, 3, 1).reshape(y.shape[0], -1, y.shape[1]) for y in ys], 1)
        return flat(cls), flat(box), flat(ctr)


def det_fixtures():
    """MMDet FCOS (ResNet-18, FPN on C3-C5 with P6/P7 on the output, GN head with centerness
    on the regression branch and normalised boxes), narrowed to 64 channels."""
    openmmlab()
    import mmdet.models  # noqa: F401  (registers the losses FCOSHead builds)
    from mmdet.models.backbones import ResNet
    from mmdet.models.dense_heads import FCOSHead
    from mmdet.models.necks import FPN
    from mmdet.utils import register_all_modules

    register_all_modules()
    out = os.path.join(ROOT, "crates", "kd-det", "tests", "fixtures", "torch")
    os.makedirs(out, exist_ok=True)
    backbone = ResNet(depth=18, num_stages=4, out_indices=(0, 1, 2, 3), norm_cfg=dict(type="BN"),
                      norm_eval=False, style="pytorch")
    neck = FPN(in_channels=[64, 128, 256, 512], out_channels=64, start_level=1, add_extra_convs="on_output",
               num_outs=5, relu_before_extra_convs=True)
    head = FCOSHead(num_classes=8, in_channels=64, feat_channels=64, stacked_convs=2,
                    strides=[8, 16, 32, 64, 128], norm_on_bbox=True, centerness_on_reg=True,
                    norm_cfg=dict(type="GN", num_groups=8, requires_grad=True))
    m = Detector(backbone, neck, head)
    quantise_(m, 7)
    g = torch.Generator().manual_seed(8)
    x = torch.randn(1, 3, 96, 96, generator=g)
    save_model_fixture(
        out, "mmdet_fcos_r18_fpn", m, x, "zip",
        wrap=lambda sd: {"meta": {"mmdet_version": "3.3.0"}, "state_dict": {"module." + k: v for k, v in sd.items()}},
        outputs=("cls", "box", "centerness"),
    )


def eval_fixtures(repdistiller):
    """Data in the official layouts and PyTorch's predictions on it, for `kd eval`: a CIFAR-100
    binary test file scored by RepDistiller's resnet8x4 with its test transform, and an
    ImageFolder split scored by torchvision's resnet18 with the ImageNet evaluation transform.
    The weights are the classification fixtures' (same seeds)."""
    import numpy as np
    import torchvision
    from PIL import Image
    from torchvision import transforms

    out = os.path.join(ROOT, "crates", "kd-repro", "tests", "fixtures", "eval")
    g = torch.Generator().manual_seed(9)

    def smooth_rgb(h, w):
        # Low-frequency colour fields, so resampling filters agree closely.
        small = torch.rand(3, 6, 6, generator=g)
        big = torch.nn.functional.interpolate(small[None], size=(h, w), mode="bicubic", align_corners=False)[0]
        return (big.clamp(0, 1) * 255).round().to(torch.uint8)

    def write_csv(path, rows):
        with open(path, "w") as f:
            f.write("sample,label,prediction\n")
            for r in rows:
                f.write(",".join(str(v) for v in r) + "\n")

    if repdistiller:
        sys.path.insert(0, repdistiller)
        from models import model_dict

        m = model_dict["resnet8x4"](num_classes=100)
        quantise_(m, 3)
        m.eval()
        n = 24
        imgs = torch.stack([smooth_rgb(32, 32) for _ in range(n)])
        labels = torch.randint(0, 100, (n,), generator=g)
        os.makedirs(os.path.join(out, "cifar100"), exist_ok=True)
        with open(os.path.join(out, "cifar100", "test.bin"), "wb") as f:
            for i in range(n):
                f.write(bytes([int(labels[i]) // 5, int(labels[i])]))  # coarse, fine
                f.write(imgs[i].numpy().tobytes())
        norm = transforms.Normalize((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))
        with torch.no_grad():
            pred = m(norm(imgs.float() / 255)).argmax(1)
        write_csv(os.path.join(out, "cifar100_expected.csv"), [(i, int(labels[i]), int(pred[i])) for i in range(n)])

    m = torchvision.models.resnet18(num_classes=10)
    quantise_(m, 2)
    m.eval()
    tf = transforms.Compose([
        transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
        transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ])
    sizes = [(300, 260), (256, 400), (227, 227), (500, 333), (240, 320), (331, 298)]
    rows = []
    for i, (h, w) in enumerate(sizes):
        cls = ["n01440764", "n01443537", "n01484850"][i % 3]
        d = os.path.join(out, "folder", "val", cls)
        os.makedirs(d, exist_ok=True)
        # ImageNet's own files are JPEGs; two of these are too, so the decoder is compared as well.
        ext = "JPEG" if i >= 4 else "png"
        name = f"ILSVRC2012_val_{i:08d}.{ext}"
        img = Image.fromarray(smooth_rgb(h, w).permute(1, 2, 0).numpy())
        img.save(os.path.join(d, name), **({"format": "JPEG", "quality": 90} if ext == "JPEG" else {}))
    root = os.path.join(out, "folder", "val")
    ds = torchvision.datasets.ImageFolder(root, transform=tf)
    with torch.no_grad():
        for path, label in ds.samples:
            x = tf(Image.open(path).convert("RGB"))[None]
            rows.append((os.path.relpath(path, root), label, int(m(x).argmax(1))))
    write_csv(os.path.join(out, "folder_expected.csv"), rows)
    # The preprocessed inputs themselves (before normalisation, in [0, 1]), for the transform test.
    crop = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.PILToTensor()])
    inputs = {os.path.relpath(p, root): crop(Image.open(p).convert("RGB")) for p, _ in ds.samples}
    cls_out = os.path.join(ROOT, "crates", "kd-classify", "tests", "fixtures", "torch")
    torch.save(inputs, os.path.join(cls_out, "imagenet_eval_inputs.pt"))
    gzip_file(os.path.join(cls_out, "imagenet_eval_inputs.pt"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repdistiller", help="a checkout of HobbitLong/RepDistiller")
    args = ap.parse_args()
    torch.manual_seed(0)
    core_fixtures()
    classify_fixtures(args.repdistiller)
    eval_fixtures(args.repdistiller)
    seg_fixtures()
    det_fixtures()
    print("torch", torch.__version__, "fixtures written")


if __name__ == "__main__":
    sys.exit(main())
