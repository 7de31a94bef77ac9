"""The PyTorch side of `benchmarks/step.py`: RepDistiller's CIFAR ResNets and a KD train step.

The modules are named like `jaxkd.models.CifarResNet` (`conv1`, `bn1`, `stages[i][j]`,
`shortcut.conv`, `fc`), so `load_jax_variables` can copy a jaxkd model's params and batch
statistics into them by path and both frameworks time exactly the same network.
Importing this module needs `torch` (the `benchmark` extra).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

_WIDTHS = {"": (16, 16, 32, 64), "x4": (32, 64, 128, 256)}


class _Shortcut(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class BasicBlock(nn.Module):
    """conv3x3(stride)-BN-ReLU-conv3x3-BN plus shortcut, then ReLU (He et al. 2016)."""

    def __init__(self, in_ch: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        needs_proj = stride != 1 or in_ch != planes
        self.shortcut = _Shortcut(in_ch, planes, stride) if needs_proj else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.shortcut is None else self.shortcut(x)))


class CifarResNet(nn.Module):
    """RepDistiller's CIFAR ResNet (depth 6n + 2), global average pooling, linear head."""

    def __init__(self, depth: int, widths: Sequence[int], num_classes: int):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages, in_ch = [], widths[0]
        for planes, stride in zip(widths[1:], (1, 2, 2), strict=True):
            blocks = [BasicBlock(in_ch, planes, stride)]
            blocks += [BasicBlock(planes, planes) for _ in range(1, n)]
            stages.append(nn.ModuleList(blocks))
            in_ch = planes
        self.stages = nn.ModuleList(stages)
        self.fc = nn.Linear(in_ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        for stage in self.stages:
            for block in stage:
                x = block(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def create_model(name: str, num_classes: int) -> CifarResNet:
    """A CIFAR ResNet by its jaxkd registry name: `resnet<depth>` or `resnet<depth>x4`."""
    if not name.startswith("resnet"):
        raise ValueError(f"the PyTorch side has CIFAR ResNets only, got model {name!r}.")
    digits = name[len("resnet") :]
    suffix = "x4" if digits.endswith("x4") else ""
    depth = int(digits[: len(digits) - len(suffix)])
    return CifarResNet(depth, _WIDTHS[suffix], num_classes)


def _flatten(tree: Mapping[Any, Any], prefix: str = "") -> dict[str, np.ndarray]:
    flat = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, path + "."))
        else:
            flat[path] = np.asarray(value, dtype=np.float32)
    return flat


# jaxkd leaf name -> torch tensor name.
_RENAMES = {
    "kernel": "weight",
    "scale": "weight",
    "bias": "bias",
    "mean": "running_mean",
    "var": "running_var",
}


def load_jax_variables(model: nn.Module, params: Mapping, state: Mapping) -> None:
    """Copies a jaxkd `from_nnx(CifarResNet)`'s params and BatchNorm statistics into `model`.

    Conv kernels go from HWIO to OIHW, dense kernels from [in, out] to [out, in]. Raises
    `ValueError` naming the first missing, extra or mis-shaped tensor.
    """
    source = {**_flatten(params), **_flatten(state)}
    target = model.state_dict()
    renamed = {}
    for path, value in source.items():
        head, _, leaf = path.rpartition(".")
        if leaf not in _RENAMES:
            raise ValueError(f"no torch counterpart for the jax variable {path!r}.")
        name = f"{head}.{_RENAMES[leaf]}"
        if value.ndim == 4:
            value = value.transpose(3, 2, 0, 1)
        elif value.ndim == 2:
            value = value.T
        renamed[name] = value
    wanted = {k for k in target if not k.endswith("num_batches_tracked")}
    if set(renamed) != wanted:
        raise ValueError(
            f"jax variables and torch model differ: only in jax {sorted(set(renamed) - wanted)}, "
            f"only in torch {sorted(wanted - set(renamed))}."
        )
    for name, value in renamed.items():
        if tuple(target[name].shape) != value.shape:
            raise ValueError(
                f"{name}: torch shape {tuple(target[name].shape)} != jax shape {value.shape} "
                "(in torch layout)."
            )
        target[name] = torch.tensor(value)
    model.load_state_dict(target)


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """RepDistiller's `DistillKL`: `T² · KL(softmax(t/T) ‖ softmax(s/T))`, summed, / batch."""
    log_p_s = F.log_softmax(student / temperature, dim=1)
    p_t = F.softmax(teacher / temperature, dim=1)
    kl = F.kl_div(log_p_s, p_t, reduction="sum")
    return kl * temperature**2 / student.shape[0]


def make_steps(
    teacher: nn.Module,
    student: nn.Module,
    *,
    lr: float,
    momentum: float,
    weight_decay: float,
    temperature: float,
    kd_weight: float,
    ce_weight: float,
    teacher_dtype: torch.dtype | None = None,
) -> dict[str, Callable[[torch.Tensor, torch.Tensor], Any]]:
    """The timed PyTorch functions, each taking `(images NCHW, labels)`.

    `distill`: teacher forward under `no_grad` in eval mode, student forward/backward in
    train mode, `ce_weight · CE + kd_weight · KD`, SGD with momentum (RepDistiller's
    `train_distill`). `teacher_forward` and `student_step` (CE only, its own SGD state) are
    the two halves that make the floor. Each returns the loss (or logits), as a tensor.
    With `teacher_dtype` the teacher's weights and inputs are cast to it once (its logits
    are cast back to float32 for the loss).
    """
    if teacher_dtype is not None:
        teacher.to(teacher_dtype)

    def run_teacher(images):
        with torch.no_grad():
            if teacher_dtype is None:
                return teacher(images)
            return teacher(images.to(teacher_dtype)).float()

    teacher.eval()
    student.train()
    # Separate students for the two steps, like the separate donated states on the JAX side.
    alone = copy.deepcopy(student)
    opts = [
        torch.optim.SGD(m.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
        for m in (student, alone)
    ]

    def distill(images, labels):
        teacher_logits = run_teacher(images)
        logits = student(images)
        loss = ce_weight * F.cross_entropy(logits, labels) + kd_weight * kd_loss(
            logits, teacher_logits, temperature
        )
        opts[0].zero_grad(set_to_none=True)
        loss.backward()
        opts[0].step()
        return loss.detach()

    def teacher_forward(images, labels):
        del labels
        return run_teacher(images)

    def student_step(images, labels):
        loss = F.cross_entropy(alone(images), labels)
        opts[1].zero_grad(set_to_none=True)
        loss.backward()
        opts[1].step()
        return loss.detach()

    return {"distill": distill, "teacher_forward": teacher_forward, "student_step": student_step}


def peak_allocated_bytes(call: Callable[[], object]) -> int:
    """Peak bytes allocated by `call()` above what was allocated when it started.

    Replays the allocator's events recorded by the PyTorch profiler (`profile_memory=True`)
    in time order: activations, gradients and workspace count while they are alive; frees
    of tensors from before the call (last step's gradients) count negatively.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        call()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        live += event.nbytes()
        peak = max(peak, live)
    return peak
