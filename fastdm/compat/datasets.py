"""The reference's get_dataset and TensorDataset, backed by fastdm's offline loaders."""
from __future__ import annotations

import os

import torch
from torch.utils.data import DataLoader, Dataset

from ..data import dataset_info, load_dataset
from ..data.images import normalize
from ..errors import FastDMError


# The reference's dataset names -> fastdm's (fastdm.data.load_dataset reads them offline).
_DATASETS = {"MNIST": "mnist", "FashionMNIST": "fashionmnist", "SVHN": "svhn", "CIFAR10": "cifar10",
             "CIFAR100": "cifar100", "TinyImageNet": "tinyimagenet"}


class TensorDataset(Dataset):
    """The reference's TensorDataset: images [N, C, H, W] kept as float32, labels as given;
    item i is (images[i], labels[i]). Both are detached."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images = images.detach().float()
        self.labels = labels.detach()

    def __getitem__(self, index):
        return self.images[index], self.labels[index]

    def __len__(self) -> int:
        return self.images.shape[0]


class _NormalizedSplit(Dataset):
    """One split as the reference's torchvision dataset serves it: item i is (ToTensor +
    Normalize of image i, its int label). The uint8 images are kept and normalised per item
    (4x less memory than float32, and the same values: fastdm.data.normalize)."""

    def __init__(self, split, mean, std, classes):
        self.split, self.mean, self.std, self.classes = split, mean, std, list(classes)

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index):
        i = int(index)
        x = normalize(self.split.images[i].unsqueeze(0), self.mean, self.std)[0]
        return x, int(self.split.labels[i])

    def __getitems__(self, indices):  # a DataLoader batch: normalised in one call
        idx = torch.as_tensor(list(indices), dtype=torch.int64)
        x = normalize(self.split.images[idx], self.mean, self.std)
        return list(zip(x.unbind(0), self.split.labels[idx].tolist()))


def _tinyimagenet_pt(path: str, mean, std):
    """The reference's own TinyImageNet file (tinyimagenet.pt): read as the reference does."""
    data = torch.load(path, map_location="cpu")

    def split(images, labels):  # x / 255, then (x - mean) / std per channel, in float32
        return TensorDataset(normalize(images.detach().float(), mean, std), labels)
    return (data["classes"], split(data["images_train"], data["labels_train"]),
            split(data["images_val"], data["labels_val"]))


def get_dataset(dataset: str, data_path: str):
    """The reference's get_dataset(dataset, data_path) -> (channel, im_size, num_classes,
    class_names, mean, std, dst_train, dst_test, testloader), with its constants and the
    values of its ToTensor + Normalize, read offline by fastdm's loaders (torchvision's files
    under data_path, which torchvision fetches there if missing, as the reference's
    download=True does).

    Differs in order only: dst_train and dst_test list each class's images together (classes
    in label order, each class's images in file order), so index i is not file image i. A
    draw of n images from one class by position (the reference's
    np.random.permutation(indices_class[c])[:n]) picks the same images. TinyImageNet reads the
    reference's data_path/tinyimagenet.pt when present (then exactly as the reference), else
    the official tiny-imagenet-200 folder under data_path.
    """
    key = _DATASETS.get(dataset)
    if key is None:
        raise FastDMError(f"fastdm.compat.get_dataset: unknown dataset {dataset!r}; it loads "
                          f"{', '.join(_DATASETS)}")
    info = dataset_info(key)
    mean, std = list(info.mean), list(info.std)
    pt = os.path.join(data_path, "tinyimagenet.pt") if key == "tinyimagenet" and data_path else ""
    if os.path.isfile(pt):
        class_names, dst_train, dst_test = _tinyimagenet_pt(pt, mean, std)
        channel, im_size = dst_train.images.shape[1], tuple(dst_train.images.shape[2:])
    else:
        data = load_dataset(key, data_path, download=key != "tinyimagenet", progress=False)
        class_names = list(data.classes)
        dst_train = _NormalizedSplit(data.train, mean, std, class_names)
        dst_test = _NormalizedSplit(data.test, mean, std, class_names)
        channel, im_size = data.channels, data.image_size
    testloader = DataLoader(dst_test, batch_size=256, shuffle=False, num_workers=0)
    return (channel, im_size, len(class_names), class_names, mean, std, dst_train, dst_test,
            testloader)
