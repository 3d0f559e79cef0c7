"""Distillation losses: logit distillation, hint (feature) losses, and the teacher's targets.

The teacher's outputs are the student's soft targets. When the transfer set does not change between
epochs (no augmentation), the teacher runs once per sample and its outputs, and any hint features,
are cached; with augmentation it runs on every augmented batch. The teacher always runs under
``torch.inference_mode``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...data import Inputs, n_rows, take
from ...errors import InvalidInputError
from ...metrics import Metric
from ...training import forward, task_loss, to_tensor

# Above this many bytes the teacher's hint features are not cached; the teacher then runs per batch.
MAX_CACHE_BYTES = 1 << 30


def soft_loss(
    student: torch.Tensor, teacher: torch.Tensor, *, temperature: float, kind: str
) -> torch.Tensor:
    """The student's distance to the teacher's outputs.

    Args:
        student, teacher: raw outputs (logits for classification) of one batch.
        temperature: softens both distributions (classification only).
        kind: the task's loss, ``cross_entropy``/``soft_cross_entropy`` (logits) or ``mse``.

    Returns:
        ``T² · KL(softmax(teacher/T) ‖ softmax(student/T))`` averaged over the batch for logits
        (the T² keeps gradients comparable across temperatures, Hinton et al. 2015); the mean
        squared error to the teacher's outputs otherwise.
    """
    if kind in ("cross_entropy", "soft_cross_entropy"):
        t = temperature
        log_p_s = F.log_softmax(student / t, dim=-1)
        log_p_t = F.log_softmax(teacher / t, dim=-1)
        return F.kl_div(log_p_s, log_p_t, log_target=True, reduction="batchmean") * (t * t)
    return F.mse_loss(student.reshape(len(student), -1), teacher.reshape(len(teacher), -1))


def distillation_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    targets: torch.Tensor | None,
    metric: Metric,
    *,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """``alpha · soft_loss + (1 − alpha) · task_loss(labels)``; without labels, the soft loss alone.

    Example:
        >>> import torch
        >>> from leanml.metrics import get_metric
        >>> s, t = torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[3.0, 2.0, 1.0]])
        >>> float(distillation_loss(s, t, torch.tensor([0]), get_metric("accuracy"), temperature=2.0, alpha=1.0))  # doctest: +ELLIPSIS
        1.2806...
    """
    soft = soft_loss(student, teacher, temperature=temperature, kind=metric.loss)
    if targets is None or alpha >= 1.0:
        return soft
    return alpha * soft + (1.0 - alpha) * task_loss(metric, student, targets)


class FeatureTaps:
    """Forward hooks that keep the latest output of named sub-modules.

    Args:
        net: the module whose layers are tapped.
        names: names from ``net.named_modules()``.
        role: ``teacher`` or ``student``, for the error message.
        where: the recipe key the names came from, for the error message.

    Raises:
        InvalidInputError: a name is not a layer of ``net``; the message lists the nearest names.
    """

    def __init__(
        self, net: nn.Module, names: Sequence[str], *, role: str, where: str = "distill.features"
    ) -> None:
        modules = dict(net.named_modules())
        for name in names:
            if name not in modules or name == "":
                raise InvalidInputError(
                    _unknown_layer(name, [n for n in modules if n], role=role, where=where)
                )
        self.names = list(names)
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles = [modules[n].register_forward_hook(self._hook(n)) for n in self.names]

    def _hook(self, name: str):
        def hook(module: nn.Module, args: object, output: object) -> None:
            if isinstance(output, (tuple, list)):
                output = output[0]
            if not isinstance(output, torch.Tensor):
                raise InvalidInputError(
                    f"layer {name!r} returns {type(output).__name__}; hint layers must return a tensor"
                )
            self.outputs[name] = output

        return hook

    def take(self) -> list[torch.Tensor]:
        """The tapped outputs of the last forward pass, in ``names`` order."""
        missing = [n for n in self.names if n not in self.outputs]
        if missing:
            raise InvalidInputError(
                f"hint layer(s) {missing} did not run in the forward pass; pick layers the model calls"
            )
        out = [self.outputs[n] for n in self.names]
        self.outputs = {}
        return out

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def _unknown_layer(name: str, known: list[str], *, role: str, where: str) -> str:
    import difflib

    near = difflib.get_close_matches(name, known, n=5, cutoff=0.4)
    shown = near or known[:12]
    label = "nearest names" if near else "layers include"
    more = "" if near or len(known) <= 12 else f" (and {len(known) - 12} more)"
    return f"{where}: {name!r} is not a layer of the {role}; {label}: {', '.join(shown)}{more}"


def make_projection(student_shape: torch.Size, teacher_shape: torch.Size) -> nn.Module:
    """What maps a student feature onto its teacher feature's width.

    A 1x1 convolution for feature maps (N, C, H, W) whose channels differ, a linear layer for
    (N, ..., D) features whose last width differs, the identity when the shapes already match.
    Spatial sizes that differ are pooled to the smaller one in :func:`hint_loss`.
    """
    if len(student_shape) == 4 and len(teacher_shape) == 4:
        cs, ct = student_shape[1], teacher_shape[1]
        return nn.Identity() if cs == ct else nn.Conv2d(cs, ct, kernel_size=1, bias=False)
    ds, dt = _flat_width(student_shape), _flat_width(teacher_shape)
    return nn.Identity() if ds == dt else nn.Linear(ds, dt, bias=False)


def _flat_width(shape: torch.Size) -> int:
    return int(np.prod(shape[1:])) if len(shape) > 1 else 1


def hint_loss(student: torch.Tensor, teacher: torch.Tensor, projection: nn.Module) -> torch.Tensor:
    """Mean squared error between the projected student feature and the teacher's (FitNets)."""
    if student.ndim == 4 and teacher.ndim == 4:
        s = projection(student)
        hs, ht = s.shape[-2:], teacher.shape[-2:]
        if hs != ht:
            size = (min(hs[0], ht[0]), min(hs[1], ht[1]))
            s, teacher = F.adaptive_avg_pool2d(s, size), F.adaptive_avg_pool2d(teacher, size)
        return F.mse_loss(s, teacher)
    s = projection(student.reshape(len(student), -1))
    return F.mse_loss(s, teacher.reshape(len(teacher), -1))


@dataclass
class TeacherOutputs:
    """The teacher's outputs (and hint features) for a batch."""

    outputs: torch.Tensor
    features: list[torch.Tensor] = field(default_factory=list)


class Teacher:
    """Runs the teacher in eval and inference mode, optionally caching its outputs on a fixed set.

    Attributes:
        samples_run: how many samples the teacher has been run on (caching makes this one pass).
    """

    def __init__(self, net: nn.Module, taps: FeatureTaps | None = None) -> None:
        self.net = net.eval()
        self.taps = taps
        self.samples_run = 0
        self._cache: TeacherOutputs | None = None

    def run(self, x: torch.Tensor | dict[str, torch.Tensor]) -> TeacherOutputs:
        """The teacher's outputs on a batch, as ordinary tensors (usable in the student's graph)."""
        with torch.inference_mode():
            out = forward(self.net, x)
            feats = self.taps.take() if self.taps else []
        self.samples_run += len(out)
        # Inference tensors cannot take part in autograd; clones made outside the mode can.
        return TeacherOutputs(out.clone(), [f.clone() for f in feats])

    def cache(self, x: Inputs, *, batch_size: int = 256) -> None:
        """Run the teacher once over ``x`` and keep the results for :meth:`lookup`."""
        parts: list[TeacherOutputs] = []
        for start in range(0, n_rows(x), batch_size):
            parts.append(self.run(to_tensor(take(x, slice(start, start + batch_size)))))
        feats = [torch.cat([p.features[i] for p in parts]) for i in range(len(parts[0].features))]
        self._cache = TeacherOutputs(torch.cat([p.outputs for p in parts]), feats)

    @property
    def cached(self) -> bool:
        return self._cache is not None

    def lookup(self, idx: torch.Tensor) -> TeacherOutputs:
        assert self._cache is not None
        return TeacherOutputs(self._cache.outputs[idx], [f[idx] for f in self._cache.features])

    def feature_bytes(self, x: Inputs) -> int:
        """Bytes the hint features of all of ``x`` would take in memory (probed on two samples)."""
        if self.taps is None:
            return 0
        probe = self.run(to_tensor(take(x, slice(0, 2))))
        self.samples_run -= len(probe.outputs)
        per_sample = sum(f[0].numel() * f.element_size() for f in probe.features)
        return per_sample * n_rows(x)
