"""Tools around a training loop: the learning-rate range test."""

from gradtx.training.lr_finder import LRFindResult, lr_find

__all__ = ["LRFindResult", "lr_find"]
