"""Stand-in for what you already have: data, and a model trained with your own loop.

Writes data.npz (x_train/y_train/x_test/y_test: signals shaped (N, 1, 128), three classes: sine,
square and sawtooth waves with random frequency, phase and noise) and weights.safetensors (the
trained model's state dict). Run it once, then: leanml run examples/own_model/recipe.yaml
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from model import build
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent


def make_signals(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 1, 128, dtype=np.float32)
    y = rng.integers(0, 3, n)
    freq = rng.uniform(2, 6, (n, 1))
    phase = rng.uniform(0, 2 * np.pi, (n, 1))
    wave = 2 * np.pi * freq * t + phase
    x = np.where(
        y[:, None] == 0,
        np.sin(wave),
        np.where(y[:, None] == 1, np.sign(np.sin(wave)), ((wave / np.pi) % 2) - 1),
    )
    x = x + rng.normal(0, 0.6, x.shape)
    return x[:, None, :].astype(np.float32), y.astype(np.int64)


EPOCHS = 6


def main() -> None:
    x_train, y_train = make_signals(1500, seed=0)
    x_test, y_test = make_signals(500, seed=1)
    np.savez(HERE / "data.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    print(f"wrote {HERE / 'data.npz'}: {len(x_train)} training and {len(x_test)} test signals")

    torch.manual_seed(0)
    net = build(channels=32, hidden=1024, classes=3)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    xs, ys = torch.from_numpy(x_train), torch.from_numpy(y_train)
    print(f"training the model for {EPOCHS} epochs (your own training loop stands here)")
    for epoch in range(1, EPOCHS + 1):  # your training loop, whatever it is
        net.train()
        for i in torch.randperm(len(xs)).split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(xs[i]), ys[i]).backward()
            opt.step()
        print(f"  epoch {epoch}/{EPOCHS}: test accuracy {accuracy(net, x_test, y_test):.3f}")
    save_file(net.state_dict(), str(HERE / "weights.safetensors"))
    print(f"wrote {HERE / 'weights.safetensors'} (test accuracy {accuracy(net, x_test, y_test):.3f})")


def accuracy(net: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    net.eval()
    with torch.no_grad():
        return float((net(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


if __name__ == "__main__":
    main()
