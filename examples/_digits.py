"""The data and model shared by the examples: scikit-learn's 8x8 digits and a small CNN.

Kept short on purpose: copy it next to an example and the example runs on its own.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split


def load(test_size: float = 0.2):
    """((x_train, y_train), (x_test, y_test)): 8x8x1 float32 images in [0, 1], int32 labels.

    The split is fixed (``random_state=0``, stratified), whatever seed the training uses.
    """
    images, labels = load_digits(return_X_y=True)
    images = (images / 16.0).astype(np.float32).reshape(-1, 8, 8, 1)
    labels = labels.astype(np.int32)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=test_size, random_state=0, stratify=labels
    )
    return (x_train, y_train), (x_test, y_test)


class CNN(nn.Module):
    """Conv 3x3 (8 channels), 2x2 average pooling, conv 3x3 (16), dense 64, 10 logits.

    Small on purpose: convolution gradients are slow on XLA:CPU, and this network still
    reaches about 97% test accuracy on the digits.
    """

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(8, (3, 3))(x))
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        x = nn.relu(nn.Conv(16, (3, 3))(x))
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(64)(x))
        return nn.Dense(10)(x)


def init_params(seed: int):
    """LeCun-normal kernels (std 1/sqrt(fan_in)) and zero biases, drawn with NumPy.

    The same distribution as Flax's defaults; drawn with NumPy because compiling JAX's
    random number generators for each parameter takes seconds on XLA:CPU.
    """
    shapes = jax.eval_shape(CNN().init, jax.random.key(0), jnp.zeros((1, 8, 8, 1)))["params"]
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        if path[-1].key == "bias":
            return jnp.zeros(leaf.shape, leaf.dtype)
        fan_in = np.prod(leaf.shape[:-1])
        return jnp.asarray(rng.standard_normal(leaf.shape) / np.sqrt(fan_in), leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def loss_fn(params, images, labels):
    """Mean softmax cross-entropy of the CNN on a batch."""
    logits = CNN().apply({"params": params}, images)
    log_probs = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(log_probs, labels[:, None], axis=1))


@jax.jit
def evaluate(params, images, labels):
    """(mean loss, accuracy) on a whole data set in one batch."""
    logits = CNN().apply({"params": params}, images)
    log_probs = jax.nn.log_softmax(logits)
    loss = -jnp.mean(jnp.take_along_axis(log_probs, labels[:, None], axis=1))
    return loss, jnp.mean(jnp.argmax(logits, axis=1) == labels)


def batch_indices(num_examples: int, batch_size: int, steps: int, seed: int) -> np.ndarray:
    """An int array (steps, batch_size): a fresh shuffle every epoch, last partial batch dropped."""
    rng = np.random.default_rng(seed)
    per_epoch = num_examples // batch_size
    epochs = -(-steps // per_epoch)
    rows = [
        rng.permutation(num_examples)[: per_epoch * batch_size].reshape(per_epoch, batch_size)
        for _ in range(epochs)
    ]
    return np.concatenate(rows)[:steps]
