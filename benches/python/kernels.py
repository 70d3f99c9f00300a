"""The loss kernels as a PyTorch user writes them, in eager mode.

Each row class loads the Rust side's inputs and weights from the check file, so the value check
compares the same computation on the same numbers; the implementations follow the reference
code bases (RepDistiller's DistillKL and hint MSE, mdistiller's DKD, MMRazor's
ChannelWiseDivergence, SimCLR's NT-Xent), not kd-rs's kernels.
"""

import torch
import torch.nn.functional as F
from torch import nn


def distill_kl(s, t, tau):
    """RepDistiller's DistillKL: KL(p_T || p_S) at temperature tau, times tau^2, batch mean."""
    p_s = F.log_softmax(s / tau, dim=1)
    p_t = F.softmax(t / tau, dim=1)
    return F.kl_div(p_s, p_t, reduction="sum") * (tau**2) / s.shape[0]


def _gt_mask(logits, target):
    target = target.reshape(-1)
    return torch.zeros_like(logits).scatter_(1, target.unsqueeze(1), 1).bool()


def _other_mask(logits, target):
    target = target.reshape(-1)
    return torch.ones_like(logits).scatter_(1, target.unsqueeze(1), 0).bool()


def _cat_mask(t, mask1, mask2):
    t1 = (t * mask1).sum(dim=1, keepdim=True)
    t2 = (t * mask2).sum(dim=1, keepdim=True)
    return torch.cat([t1, t2], dim=1)


def dkd_loss(logits_student, logits_teacher, target, alpha, beta, temperature):
    """mdistiller's dkd_loss (mdistiller/distillers/DKD.py): alpha * TCKD + beta * NCKD.

    TCKD is the KL between the binary [p_gt, sum of the others] splits, through torch.log of
    the summed probabilities; NCKD the KL between the softmaxes with 1000 subtracted from the
    target's logit/T. Both are summed over the batch, times T^2, over B (mdistiller's
    size_average=False, spelled reduction="sum").
    """
    gt_mask = _gt_mask(logits_student, target)
    other_mask = _other_mask(logits_student, target)
    pred_student = F.softmax(logits_student / temperature, dim=1)
    pred_teacher = F.softmax(logits_teacher / temperature, dim=1)
    pred_student = _cat_mask(pred_student, gt_mask, other_mask)
    pred_teacher = _cat_mask(pred_teacher, gt_mask, other_mask)
    log_pred_student = torch.log(pred_student)
    tckd_loss = F.kl_div(log_pred_student, pred_teacher, reduction="sum") * (temperature**2) / target.shape[0]
    pred_teacher_part2 = F.softmax(logits_teacher / temperature - 1000.0 * gt_mask, dim=1)
    log_pred_student_part2 = F.log_softmax(logits_student / temperature - 1000.0 * gt_mask, dim=1)
    nckd_loss = (
        F.kl_div(log_pred_student_part2, pred_teacher_part2, reduction="sum")
        * (temperature**2)
        / target.shape[0]
    )
    return alpha * tckd_loss + beta * nckd_loss


def cwd(s, t, tau):
    """MMRazor's ChannelWiseDivergence (without the loss weight)."""
    n, c, h, w = s.shape
    t2 = t.reshape(-1, w * h) / tau
    p_t = F.softmax(t2, dim=1)
    loss = torch.sum(p_t * F.log_softmax(t2, dim=1) - p_t * F.log_softmax(s.reshape(-1, w * h) / tau, dim=1))
    return loss * (tau**2) / (c * n)


def gaussian_kl_mean(mu_t, var_t, mu_s, logvar_s):
    """Closed-form KL(N(mu_t, var_t) || N(mu_s, exp(logvar_s))), mean over elements."""
    var_t = var_t.clamp_min(1e-4)
    logvar_s = logvar_s.clamp(-10.0, 10.0)
    kl = logvar_s - var_t.log() + (var_t + (mu_t - mu_s) ** 2) * torch.exp(-logvar_s) - 1.0
    return (0.5 * kl).mean()


def nt_xent(z1, z2, tau):
    """SimCLR's NT-Xent over the 2B views."""
    b = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2], dim=0), dim=1)
    sim = z @ z.t() / tau
    sim = sim.masked_fill(torch.eye(2 * b, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(z.device)
    return F.cross_entropy(sim, target)


def info_nce(q, k, tau):
    """InfoNCE with in-batch negatives."""
    logits = F.normalize(q, dim=1) @ F.normalize(k, dim=1).t() / tau
    return F.cross_entropy(logits, torch.arange(q.shape[0], device=q.device))


def load_params(module, tensors, prefix):
    """Copies `prefix<name>` tensors into the module's parameters and buffers of that name."""
    with torch.no_grad():
        for name, p in list(module.named_parameters()) + list(module.named_buffers()):
            key = prefix + name
            if key in tensors:
                p.copy_(tensors[key])
            elif not name.endswith("num_batches_tracked"):
                raise KeyError(f"check file has no {key}")


class LossRow:
    """A loss over named inputs (and optionally a module), forward and forward + backward."""

    module = None
    module_prefix = "param."

    def __init__(self, t, p, dev):
        self.t, self.p, self.dev = t, p, dev
        self.inputs = {}
        for key, v in t.items():
            if key.startswith("in."):
                name = key[3:]
                x = v.to(dev).clone()
                if ("grad." + name) in t:
                    x.requires_grad_(True)
                self.inputs[name] = x
        self.setup()
        if self.module is not None:
            self.module.to(dev)
            load_params(self.module, t, self.module_prefix)

    def setup(self):
        pass

    def loss(self):
        raise NotImplementedError

    def check(self):
        seed = self.p.get("noise_seed")
        if seed is not None:
            torch.manual_seed(seed)
        l = self.loss()
        l.backward()
        pairs = [("loss", l.detach(), self.t["out.loss"])]
        for name, x in self.inputs.items():
            if x.requires_grad:
                pairs.append(("grad." + name, x.grad, self.t["grad." + name]))
                x.grad = None
        if self.module is not None:
            for name, w in self.module.named_parameters():
                key = "grad." + self.module_prefix + name
                if key in self.t:
                    pairs.append((key, w.grad, self.t[key]))
        return pairs

    def fn(self, mode):
        if mode == "forward":

            def run():
                with torch.no_grad():
                    return self.loss().item()

        else:

            def run():
                l = self.loss()
                l.backward()
                return l.item()

        return run


class KdLoss(LossRow):
    def loss(self):
        return distill_kl(self.inputs["s"], self.inputs["t"], self.p["tau"])


class Dkd(LossRow):
    def loss(self):
        x, p = self.inputs, self.p
        return dkd_loss(x["s"], x["t"], x["labels"], p["alpha"], p["beta"], p["tau"])


class Cwd(LossRow):
    def loss(self):
        return cwd(self.inputs["s"], self.inputs["t"], self.p["tau"])


class GaussianKl(LossRow):
    def loss(self):
        x = self.inputs
        return gaussian_kl_mean(x["mu_t"], x["var_t"], x["mu_s"], x["logvar_s"])


class FitNets(LossRow):
    """RepDistiller-style hint: a 1x1 conv + BN regressor, then the element-mean MSE."""

    module_prefix = "param.hint."

    def setup(self):
        c_s, c_t = self.p["c_s"], self.p["c_t"]
        self.module = nn.Sequential()
        self.module.add_module("conv", nn.Conv2d(c_s, c_t, 1, bias=False))
        self.module.add_module("bn", nn.BatchNorm2d(c_t))
        self.module.train()

    def loss(self):
        return F.mse_loss(self.module(self.inputs["s"]), self.inputs["t"])


class NtXent(LossRow):
    def loss(self):
        return nt_xent(self.inputs["z1"], self.inputs["z2"], self.p["tau"])


class InfoNce(LossRow):
    def loss(self):
        return info_nce(self.inputs["z1"], self.inputs["z2"], self.p["tau"])


class SelfReg(LossRow):
    """The HD student's loss: student gate x significance weights on CE and KD."""

    def loss(self):
        x, p = self.inputs, self.p
        s, t, y, sig = x["s"], x["t"], x["y"], x["significance"]
        tau, alpha = p["tau"], p["alpha"]
        with torch.no_grad():
            conf = s.softmax(-1).gather(1, y[:, None]).squeeze(1)
            participate = ~((s.argmax(-1) == y) & (conf >= p["beta"]))
            w = sig * participate.float()
        ce = F.cross_entropy(s, y, reduction="none")
        kd = F.kl_div(F.log_softmax(s / tau, 1), F.softmax(t / tau, 1), reduction="none").sum(1) * tau**2
        den = w.sum().clamp_min(1e-12)
        return (1 - alpha) * (w * ce).sum() / den + alpha * (w * kd).sum() / den


class ForwardRow:
    """A row timed forward only; `compute` returns (host number, {output name: tensor})."""

    def __init__(self, t, p, dev):
        self.t, self.p, self.dev = t, p, dev
        self.inputs = {k[3:]: v.to(dev) for k, v in t.items() if k.startswith("in.")}

    def check(self):
        _, outs = self.compute()
        return [(k, v, self.t["out." + k]) for k, v in outs.items()]

    def fn(self, mode):
        def run():
            with torch.no_grad():
                return self.compute()[0]

        return run


class Kd3Select(ForwardRow):
    """KD3's selection: mixed logits, class-adaptive thresholds (FlexMatch rule)."""

    def compute(self):
        a, p_cut = self.p["share"], self.p["p_cut"]
        z = self.inputs["z_t"] * a + self.inputs["z_s"] * (1 - a)
        conf, pred = z.double().softmax(-1).max(-1)
        counts = torch.bincount(pred, minlength=z.shape[1]).double()
        sigma = counts / counts.max().clamp_min(1)
        theta = p_cut * sigma / (2 - sigma)
        keep = conf > theta[pred]
        return keep.sum().item(), {"keep": keep.to(torch.uint8)}


class Kd3Mix(ForwardRow):
    """MixDistribution (MixStyle on the input batch) with the given weights and partners."""

    def compute(self):
        x, lam, perm = self.inputs["x"], self.inputs["lambda"], self.inputs["perm"]
        eps = self.p["eps"]
        mu = x.mean(dim=(2, 3), keepdim=True)
        sig = (x.var(dim=(2, 3), keepdim=True) + eps).sqrt()
        mu, sig = mu.detach(), sig.detach()
        lam = lam.view(-1, 1, 1, 1)
        mu_mix = mu * lam + mu[perm] * (1 - lam)
        sig_mix = sig * lam + sig[perm] * (1 - lam)
        y = (x - mu) / sig * sig_mix + mu_mix
        return y[0, 0, 0, 0].item(), {"y": y}
