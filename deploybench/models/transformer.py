"""``tiny_transformer``: a two-layer encoder over token ids, trained here to name a sequence's majority token.

Token embedding plus a learned positional embedding, two pre-norm layers of multi-head
self-attention (written out as matmul + softmax, which every converter in the matrix reads) and a
GELU MLP, a final LayerNorm, and a Linear head on the mean over tokens. Input ``tokens`` is int64
("batch", "seq"); any length up to ``MAX_LENGTH`` works. Training takes a few seconds on CPU and
the weights are cached, so its outputs mean something: the task is synthetic, and so is the real
data distribution — ``calibration_data`` and ``eval_data`` draw from the very same generator.
"""

from __future__ import annotations

import numpy as np

from ..spec import ModelSpec, TensorSpec
from ._data import cached_weights, one_training_thread

VOCAB = 16
MAX_LENGTH = 512
SEQ_LENGTH = 32

TRAINING_RECIPE = {
    "model": "tiny_transformer", "version": 2, "seed": 0, "vocab": VOCAB, "max_length": MAX_LENGTH,
    "width": 64, "heads": 4, "layers": 2, "mlp": 128,
    "steps": 150, "batch_size": 64, "lengths": [16, 32, 48], "lr": 0.003, "weight_decay": 0.01,
}

# Measured with TRAINING_RECIPE (torch 2.13 CPU) on eval_data(): 512 of 512 right; also 0.996 at
# length 16 and 1.000 at length 64.
HELD_OUT_TOP1 = 1.0


def majority_token_sequences(n: int, length: int = SEQ_LENGTH, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` seeded token sequences (int64 n×length) and their majority token (int64 n).

    Tokens are uniform over the vocabulary, then one token is planted at a quarter of the
    positions; sequences whose most frequent token is tied are drawn again, so every label is
    unambiguous.
    """
    rng = np.random.default_rng(seed)
    kept = []
    while sum(len(rows) for rows in kept) < n:
        batch = rng.integers(0, VOCAB, size=(2 * n, length))
        planted = rng.integers(0, VOCAB, size=2 * n)
        positions = rng.random((2 * n, length)).argsort(axis=1)[:, :max(length // 4, 1)]
        np.put_along_axis(batch, positions, planted[:, None], axis=1)
        top_two = np.sort(_token_counts(batch), axis=1)[:, -2:]
        kept.append(batch[top_two[:, 1] > top_two[:, 0]])
    tokens = np.concatenate(kept)[:n] if kept else np.empty((0, length), np.int64)
    return tokens.astype(np.int64), _token_counts(tokens).argmax(axis=1).astype(np.int64)


def _token_counts(tokens: np.ndarray) -> np.ndarray:
    """How often each vocabulary token occurs in each row: int n×VOCAB."""
    return (tokens[..., None] == np.arange(VOCAB)).sum(axis=1)


def transformer_network(vocab: int = VOCAB, width: int = 64, heads: int = 4, layers: int = 2, mlp: int = 128,
                        max_length: int = MAX_LENGTH, num_classes: int = VOCAB):
    """An untrained encoder classifier: tokens int64 (batch, seq) → logits (batch, num_classes)."""
    import torch
    from torch import nn

    class SelfAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.heads = heads
            self.scale = (width // heads) ** -0.5
            self.qkv = nn.Linear(width, 3 * width)
            self.out = nn.Linear(width, width)

        def forward(self, x):
            batch, length = x.shape[0], x.shape[1]
            q, k, v = self.qkv(x).reshape(batch, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
            weights = torch.softmax(torch.matmul(q, k.transpose(-2, -1)) * self.scale, dim=-1)
            mixed = torch.matmul(weights, v).transpose(1, 2).reshape(batch, length, -1)
            return self.out(mixed)

    class EncoderLayer(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm1 = nn.LayerNorm(width)
            self.attention = SelfAttention()
            self.norm2 = nn.LayerNorm(width)
            self.mlp = nn.Sequential(nn.Linear(width, mlp), nn.GELU(), nn.Linear(mlp, width))

        def forward(self, x):
            x = x + self.attention(self.norm1(x))
            return x + self.mlp(self.norm2(x))

    class TinyTransformer(nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = nn.Embedding(vocab, width)
            self.position = nn.Parameter(torch.randn(1, max_length, width) * 0.02)
            self.layers = nn.Sequential(*[EncoderLayer() for _ in range(layers)])
            self.norm = nn.LayerNorm(width)
            self.head = nn.Linear(width, num_classes)

        def forward(self, tokens):
            x = self.embedding(tokens) + self.position[:, :tokens.shape[1]]
            return self.head(self.norm(self.layers(x)).mean(dim=1))

    return TinyTransformer()


def _network_from_recipe():
    recipe = TRAINING_RECIPE
    return transformer_network(recipe["vocab"], recipe["width"], recipe["heads"], recipe["layers"], recipe["mlp"],
                               recipe["max_length"], recipe["vocab"])


def _train() -> dict:
    """Train on fresh seeded batches of varying length; return the state_dict. Deterministic on CPU."""
    import torch

    recipe = TRAINING_RECIPE
    with one_training_thread():
        torch.manual_seed(recipe["seed"])
        network = _network_from_recipe()
        optimizer = torch.optim.AdamW(network.parameters(), lr=recipe["lr"], weight_decay=recipe["weight_decay"])
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=recipe["lr"], total_steps=recipe["steps"])
        network.train()
        for step in range(recipe["steps"]):
            length = recipe["lengths"][step % len(recipe["lengths"])]
            tokens, labels = majority_token_sequences(recipe["batch_size"], length, seed=recipe["seed"] * 100003 + step)
            loss = torch.nn.functional.cross_entropy(network(torch.from_numpy(tokens)), torch.from_numpy(labels))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
        return network.state_dict()


def build_tiny_transformer():
    """The trained encoder in eval mode (trained on first use, then loaded from the weight cache)."""
    network = _network_from_recipe()
    network.load_state_dict(cached_weights("tiny_transformer", TRAINING_RECIPE, _train))
    return network.eval()


EVAL_SEED = 1234  # far from the training seeds (0..steps), so eval sequences were never trained on
EVAL_SIZE = 512


def eval_data() -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Held-out sequences: ({"tokens": int64 512×32}, int64 majority-token labels)."""
    tokens, labels = majority_token_sequences(EVAL_SIZE, SEQ_LENGTH, seed=EVAL_SEED)
    return {"tokens": tokens}, labels


def calibration_data(n: int) -> list[dict[str, np.ndarray]]:
    """Up to ``n`` seeded sequences from the task's own generator, each ``{"tokens": int64 1×32}``."""
    tokens, _ = majority_token_sequences(max(int(n), 0), SEQ_LENGTH, seed=EVAL_SEED + 1)
    return [{"tokens": tokens[i:i + 1]} for i in range(len(tokens))]


def tiny_transformer() -> ModelSpec:
    """The zoo entry: the spec is cheap; the network is trained or loaded only by ``spec.build()``."""
    return ModelSpec(
        name="tiny_transformer",
        inputs=(TensorSpec("tokens", ("batch", "seq"), "int64", value_range=(0, VOCAB)),),
        factory=build_tiny_transformer,
        output_names=("logits",),
        task="classification",
        dims={"batch": 1, "seq": SEQ_LENGTH},
        eval_data=eval_data,
        calibration_data=calibration_data,
        description=(f"2-layer encoder (width 64, 4 heads, GELU MLP, mean-pooled head) over {VOCAB} token ids, "
                     f"trained to name a sequence's majority token; held-out top-1 {HELD_OUT_TOP1:.3f} "
                     f"({EVAL_SIZE} sequences of {SEQ_LENGTH})"),
        task_config={"num_classes": VOCAB, "max_length": MAX_LENGTH},
    )
