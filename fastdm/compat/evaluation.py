"""The reference's get_eval_pool and evaluate_synset (its training loop, through fastdm's
schedule runner and the compatible DiffAugment)."""
from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ..errors import FastDMError
from ..training import run_schedule
from .augment import DiffAugment


_EVAL_POOLS = {
    "M": ["MLP", "ConvNet", "LeNet", "AlexNet", "VGG11", "ResNet18"],
    "B": ["ConvNetBN", "ConvNetASwishBN", "AlexNetBN", "VGG11BN", "ResNet18BN"],
    "W": ["ConvNetW32", "ConvNetW64", "ConvNetW128", "ConvNetW256"],
    "D": ["ConvNetD1", "ConvNetD2", "ConvNetD3", "ConvNetD4"],
    "A": ["ConvNetAS", "ConvNetAR", "ConvNetAL", "ConvNetASwish"],
    "P": ["ConvNetNP", "ConvNetMP", "ConvNetAP"],
    "N": ["ConvNetNN", "ConvNetBN", "ConvNetLN", "ConvNetIN", "ConvNetGN"],
}


def get_eval_pool(eval_mode: str, model: str, model_eval: str) -> list:
    """The reference's evaluation architectures for ``eval_mode``: M (several), B (BatchNorm
    ones), W/D/A/P/N (ConvNet width, depth, activation, pooling, normalisation ablations),
    S (``model``, with a BatchNorm suffix cut: ConvNetBN -> ConvNet), SS (``model``), any
    other: [model_eval]."""
    if eval_mode in _EVAL_POOLS:
        return list(_EVAL_POOLS[eval_mode])
    if eval_mode == "S" and "BN" in model:
        print("Attention: evaluating with the normalisation before 'BN' instead of BatchNorm "
              "(a synthetic set is too small to estimate BatchNorm's statistics).")
        return [model[:model.index("BN")]]
    if eval_mode in ("S", "SS"):
        return [model]
    return [model_eval]


def _need(args, name: str):
    if not hasattr(args, name):
        raise FastDMError(f"evaluate_synset needs args.{name} (as the reference's does)")
    return getattr(args, name)


def _dc_augment(images: torch.Tensor, param, device) -> torch.Tensor:
    """The reference's DC augmentation (utils.augment, used when args.dsa is off), in place:
    each image gets one of the strategy's crop/scale/rotate/noise, chosen and parametrised by
    NumPy's global RNG in the reference's order (noise from torch's global RNG)."""
    if param is None or param["strategy"] == "none":
        return images
    n, c, h, w = images.shape
    mean = [float(torch.mean(images[:, ch])) for ch in range(c)]  # before any image changes
    fill = torch.tensor(mean, dtype=torch.float, device=device).view(c, 1, 1)
    ops = param["strategy"].split("_")
    for i in range(n):
        choice = np.random.permutation(ops)[0]
        if choice == "crop":  # pad by `crop` with the channel means, cut at a random offset
            pad = param["crop"]
            canvas = fill.expand(c, h + 2 * pad, w + 2 * pad).clone()
            canvas[:, pad:pad + h, pad:pad + w] = images[i]
            r, q = np.random.permutation(pad * 2)[0], np.random.permutation(pad * 2)[0]
            images[i] = canvas[:, r:r + h, q:q + w]
        elif choice == "scale":  # nearest resize, centred on a zero canvas; both sides from h
            s = param["scale"]
            sh = int(np.random.uniform(1 - s, 1 + s) * h)
            sw = int(np.random.uniform(1 - s, 1 + s) * h)
            side = max(sh, sw, h, w)
            canvas = torch.zeros(c, side, side, dtype=torch.float, device=device)
            r, q = (side - sh) // 2, (side - sw) // 2
            canvas[:, r:r + sh, q:q + sw] = F.interpolate(images[i:i + 1], [sh, sw])[0]
            r, q = (side - h) // 2, (side - w) // 2
            images[i] = canvas[:, r:r + h, q:q + w]
        elif choice == "rotate":  # scipy's cubic-spline rotation, filled with the mean of means
            from scipy.ndimage import rotate
            angle = np.random.randint(-param["rotate"], param["rotate"])
            out = rotate(images[i].cpu().numpy(), angle=angle, axes=(-2, -1), cval=np.mean(mean))
            r, q = (out.shape[-2] - h) // 2, (out.shape[-1] - w) // 2
            images[i] = torch.tensor(out[:, r:r + h, q:q + w], dtype=torch.float, device=device)
        elif choice == "noise":
            images[i] = images[i] + param["noise"] * torch.randn(images.shape[1:], dtype=torch.float,
                                                                 device=device)
    return images


@torch.no_grad()
def _test_accuracy(net, testloader, device) -> float:
    net.eval()
    correct, seen = 0, 0
    for batch in testloader:
        img, lab = batch[0].float().to(device), batch[1].long().to(device)
        correct += int((net(img).argmax(1) == lab).sum())
        seen += lab.shape[0]
    return correct / max(1, seen)


def evaluate_synset(it_eval, net, images_train, labels_train, testloader, args):
    """The reference's evaluate_synset: train ``net`` on the images for
    args.epoch_eval_train + 1 passes (batches of args.batch_train in a shuffled order,
    cross-entropy, SGD lr args.lr_net, momentum 0.9, weight decay 5e-4; after pass
    epochs // 2 + 1 the rate x0.1 with a new optimiser), each batch augmented by DSA
    (args.dsa: DiffAugment(x, args.dsa_strategy, param=args.dsa_param), per-sample draws from
    the global RNG) or else by DC augmentation (args.dc_aug_param), then test on
    ``testloader``. Returns (net, acc_train of the last pass, acc_test).

    Every random draw (the order of each pass, DSA, DC augmentation) comes from the same
    global RNG calls in the same order as the reference's, so from the same RNG state and the
    same initial ``net`` it trains the same model (to float rounding). The passes run through
    fastdm.training.run_schedule, the augmentation through fastdm's DSA.
    """
    device = _need(args, "device")
    lr, epochs = float(_need(args, "lr_net")), int(_need(args, "epoch_eval_train"))
    batch = int(_need(args, "batch_train"))
    dsa = bool(_need(args, "dsa"))
    strategy, dsa_param = (_need(args, "dsa_strategy"), _need(args, "dsa_param")) if dsa else (None, None)
    dc_param = getattr(args, "dc_aug_param", None)
    if batch < 1 or epochs < 0:
        raise FastDMError(f"evaluate_synset needs args.batch_train >= 1 and args.epoch_eval_train "
                          f">= 0, got {batch} and {epochs}")
    net = net.to(device)
    images = images_train.to(device).detach().float()
    labels = labels_train.to(device).detach()
    n = images.shape[0]
    if n == 0 or labels.shape[0] != n:
        raise FastDMError(f"evaluate_synset needs as many labels as images (at least one), got "
                          f"{labels.shape[0]} labels for {n} images")
    # Iterating a shuffling DataLoader draws the global RNG as the reference's loader does
    # (its base seed, then its sampler's seed), whatever torch's version does inside.
    shuffle = DataLoader(range(n), batch_size=n, shuffle=True, num_workers=0)
    cfg = SimpleNamespace(schedule="dm", epochs=epochs, lr=lr, momentum=0.9, weight_decay=0.0005,
                          optimizer="sgd", batch_train=batch)
    tally = {"loss": 0.0, "correct": 0, "seen": 0}  # this pass so far, as the reference sums it
    last = {}

    def loss_for_batch(idx, _step):
        img, lab = images[idx], labels[idx].long()
        img = DiffAugment(img, strategy, param=dsa_param) if dsa else _dc_augment(img, dc_param, device)
        out = net(img)
        loss = F.cross_entropy(out, lab)
        tally["loss"] += loss.item() * lab.shape[0]  # synchronises per batch, as the reference
        tally["correct"] += int((out.argmax(1) == lab).sum())
        tally["seen"] += lab.shape[0]
        return loss

    def pass_done(_ep, _mean):
        last.update(loss=tally["loss"] / tally["seen"], acc=tally["correct"] / tally["seen"])
        tally.update(loss=0.0, correct=0, seen=0)

    start = time.time()
    net.train()
    run_schedule(cfg, list(net.parameters()), n, lambda ep: next(iter(shuffle)).to(device),
                 loss_for_batch, pass_done)
    time_train = time.time() - start
    acc_test = _test_accuracy(net, testloader, device)
    print(f"{time.strftime('[%Y-%m-%d %H:%M:%S]', time.localtime())} Evaluate_{it_eval:02d}: "
          f"epoch = {epochs:04d} train time = {int(time_train)} s train loss = {last['loss']:.6f} "
          f"train acc = {last['acc']:.4f}, test acc = {acc_test:.4f}")
    return net, last["acc"], acc_test
