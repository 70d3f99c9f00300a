"""Rows with networks: a GDD level, an MGD level, UniKD's AFF + FDP heads, and the whole
distillation step (RepDistiller's CIFAR ResNets, resnet32x4 -> resnet8x4, with
torch.optim.SGD).

Module and parameter names follow the Rust side's variable names, so the Rust weights load by
name.
"""

import torch
import torch.nn.functional as F
from torch import nn

from kernels import LossRow, cwd, distill_kl, gaussian_kl_mean, load_params


class GddLevel(nn.Module):
    """GDD's level as the released code builds it: align (1x1 conv when channels differ),
    N(0, std^2) noise shared over channels, conv3x3-ReLU-conv3x3 generator, CWD to the teacher."""

    def __init__(self, c_s, c_t):
        super().__init__()
        self.align = nn.Conv2d(c_s, c_t, 1) if c_s != c_t else None
        self.generation = nn.Sequential(
            nn.Conv2d(c_t, c_t, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(c_t, c_t, 3, padding=1)
        )

    def forward(self, s, t, tau, alpha, std):
        x = self.align(s) if self.align is not None else s
        n, _, h, w = x.shape
        x = x + torch.randn((n, 1, h, w), device=x.device) * std
        return cwd(self.generation(x), t, tau) * alpha


class Gdd(LossRow):
    def setup(self):
        self.module = GddLevel(self.inputs["s"].shape[1], self.inputs["t"].shape[1])

    def loss(self):
        p = self.p
        return self.module(self.inputs["s"], self.inputs["t"], p["tau"], p["alpha"], p["noise_std"])


class MgdLevel(GddLevel):
    """MGD's FeatureLoss as released (yzd-v/MGD): the same align and generation modules as
    GDD's level, a spatial mask instead of noise, the summed squared error over the batch.

    The release draws the mask inside get_dis_loss, `mat = torch.rand((N, 1, H, W))` set to 0
    where `mat > 1 - lambda_mgd` and to 1 elsewhere; here it is the check file's mask, so both
    sides mask the same positions.
    """

    def forward(self, preds_S, preds_T, alpha_mgd, mat):
        if self.align is not None:
            preds_S = self.align(preds_S)
        return self.get_dis_loss(preds_S, preds_T, mat) * alpha_mgd

    def get_dis_loss(self, preds_S, preds_T, mat):
        loss_mse = nn.MSELoss(reduction="sum")
        N = preds_T.shape[0]
        masked_fea = torch.mul(preds_S, mat)
        new_fea = self.generation(masked_fea)
        return loss_mse(new_fea, preds_T) / N


class Mgd(LossRow):
    def setup(self):
        self.module = MgdLevel(self.inputs["s"].shape[1], self.inputs["t"].shape[1])

    def loss(self):
        x = self.inputs
        return self.module(x["s"], x["t"], self.p["alpha"], x["mask"])


class AffBlock(nn.Module):
    def __init__(self, c_in, c_a, deeper):
        super().__init__()
        self.embed = nn.Conv2d(c_in, c_a, 1, bias=False)
        self.bn = nn.BatchNorm2d(c_a)
        self.up_proj = nn.Conv2d(deeper, c_a, 1, bias=False) if deeper is not None and deeper != c_a else None
        self.gate = nn.Conv2d(2 * c_a, 2, 1) if deeper is not None else None


class FdpHead(nn.Module):
    def __init__(self, c, d):
        super().__init__()
        self.mu = nn.Linear(c, d)
        self.logvar = nn.Linear(c, d)


class AffFdp(nn.Module):
    """UniKD's student side: a top-down gated fusion (AFF) and per-stage Gaussian heads (FDP)."""

    def __init__(self, widths, clamp):
        super().__init__()
        n = len(widths)
        self.aff = nn.Module()
        for i, c in enumerate(widths):
            deeper = widths[i + 1] if i + 1 < n else None
            self.aff.add_module(f"stage{i}", AffBlock(c, c, deeper))
        for i, c in enumerate(widths):
            self.add_module(f"fdp{i}", FdpHead(c, c))
        self.n, self.clamp = n, clamp

    def forward(self, feats):
        blocks = [getattr(self.aff, f"stage{i}") for i in range(self.n)]
        deeper = blocks[-1].bn(blocks[-1].embed(feats[-1]))
        fused = [deeper]
        for i in range(self.n - 2, -1, -1):
            b = blocks[i]
            x = b.bn(b.embed(feats[i]))
            u = deeper
            if u.shape[-2:] != x.shape[-2:]:
                u = F.interpolate(u, size=x.shape[-2:], mode="nearest")
            if b.up_proj is not None:
                u = b.up_proj(u)
            g = torch.sigmoid(b.gate(torch.cat([x, u], dim=1)))
            deeper = g[:, 0:1] * x + g[:, 1:2] * u
            fused.append(deeper)
        fused.reverse()
        out = []
        for i, a in enumerate(fused):
            h = a.mean(dim=(2, 3))
            head = getattr(self, f"fdp{i}")
            out.append((head.mu(h), head.logvar(h).clamp(-self.clamp, self.clamp)))
        return out


class AffFdpRow(LossRow):
    def setup(self):
        self.module = AffFdp(self.p["widths"], self.p["logvar_clamp"])
        self.module.train()

    def loss(self):
        x = self.inputs
        preds = self.module([x["f0"], x["f1"], x["f2"]])
        total = None
        for i, (mu, logvar) in enumerate(preds):
            kl = gaussian_kl_mean(x[f"mu{i}"], x[f"var{i}"], mu, logvar)
            total = kl if total is None else total + kl
        return total


class BasicBlock(nn.Module):
    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        res = x if self.downsample is None else self.downsample(x)
        return F.relu(out + res)


class CifarResNet(nn.Module):
    """RepDistiller's CIFAR ResNet (resnet8x4, resnet32x4: widths 32, 64, 128, 256)."""

    def __init__(self, depth, num_classes, widths=(32, 64, 128, 256)):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        c_in = widths[0]
        for s, stride in enumerate([1, 2, 2]):
            blocks = []
            for b in range(n):
                blocks.append(BasicBlock(c_in, widths[s + 1], stride if b == 0 else 1))
                c_in = widths[s + 1]
            self.add_module(f"layer{s + 1}", nn.Sequential(*blocks))
        self.fc = nn.Linear(widths[3], num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def _depth(name):
    return int(name.replace("resnet", "").replace("x4", ""))


class KdStep:
    """One training step of Hinton KD as a PyTorch training loop writes it."""

    def __init__(self, t, p, dev):
        self.t, self.p = t, p
        k = p["classes"]
        self.teacher = CifarResNet(_depth(p["teacher"]), k).to(dev)
        self.student = CifarResNet(_depth(p["student"]), k).to(dev)
        load_params(self.teacher, t, "param.teacher.")
        load_params(self.student, t, "param.student.")
        self.teacher.eval()
        self.student.train()
        self.x, self.y = t["in.x"].to(dev), t["in.y"].to(dev)
        self.opt = torch.optim.SGD(
            self.student.parameters(), lr=p["lr"], momentum=p["momentum"], weight_decay=p["weight_decay"]
        )

    def step(self):
        p = self.p
        logits = self.student(self.x)
        with torch.no_grad():
            t_logits = self.teacher(self.x)
        loss = p["ce_weight"] * F.cross_entropy(logits, self.y) + p["kd_weight"] * distill_kl(
            logits, t_logits, p["tau"]
        )
        value = loss.item()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return value, logits

    def check(self):
        value, logits = self.step()
        pairs = [("loss", torch.tensor(value, dtype=torch.float32), self.t["out.loss"]), ("logits", logits.detach(), self.t["out.logits"])]
        for name, w in self.student.named_parameters():
            pairs.append(("grad." + name, w.grad, self.t["grad.param.student." + name]))
            pairs.append(("after." + name, w.detach(), self.t["out.after." + name]))
        return pairs

    def fn(self, mode):
        return lambda: self.step()[0]
