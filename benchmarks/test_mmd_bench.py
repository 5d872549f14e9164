"""The DM loss: per-class mean embeddings of real and synthetic features, forward + backward."""
import torch

from fastdm.losses import class_sums, mean_embedding_loss

# classes, real per class, synthetic per class, feature dim
SIZES = {"tiny": (3, 8, 2, 32), "small": (100, 64, 10, 2048), "large": (1000, 256, 10, 2048)}


def test_mean_embedding_loss(timed, device, size):
    classes, n_real, ipc, d = SIZES[size]
    real = torch.randn(classes * n_real, d, device=device)
    syn = torch.randn(classes * ipc, d, device=device, requires_grad=True)
    real_counts = torch.full((classes,), n_real, device=device)
    syn_counts = torch.full((classes,), ipc, device=device)

    def loss_and_grad():
        real_mean = class_sums(real, real_counts) / n_real
        loss = mean_embedding_loss(real_mean, syn, syn_counts).sum()
        return torch.autograd.grad(loss, syn)[0]

    assert timed(loss_and_grad).shape == syn.shape
