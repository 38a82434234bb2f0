"""Models: the built-ins, and "bring your own model" by import path.

Built-ins (:data:`MODELS`): ``small_cnn`` and ``leaf_cnn`` for images,
``logreg`` and ``mlp`` for tables (or any input, flattened). None uses
BatchNorm, so Opacus' per-sample gradients apply as is. Every built-in
exposes ``embed(x)`` (the penultimate representation, which MOON's
contrastive loss uses as its projection-head output) and ``head(z)`` (the
classifier), with ``forward = head(embed(x))``.

A model spec for :func:`build_model` is one of

* a built-in name: ``"mlp"``;
* an import path: ``"mypkg.nets:TabularNet"`` or ``"mypkg.nets.TabularNet"``
  (the module must be importable: installed, or on ``PYTHONPATH``);
* a mapping in Lightning CLI's convention:
  ``{"class_path": "mypkg.nets.TabularNet", "init_args": {"hidden": 64}}``
  (``class_path`` may be a built-in name too: ``{"class_path": "mlp",
  "init_args": {"hidden": [32, 16]}}``);
* in Python, the class itself.

The class gets ``input_shape`` (a tuple) and/or ``num_classes`` as keyword
arguments when its constructor has parameters of those names and
``init_args`` does not set them. Two kinds of class are accepted:

* a plain :class:`torch.nn.Module` whose ``forward(x)`` returns class logits
  ``[B, num_classes]``: fedlight trains it with cross-entropy and the loop's
  SGD (``--lr``, ``--momentum``); it may expose ``embed``/``head`` as above
  (MOON needs them);
* a :class:`lightning.LightningModule` with its own ``training_step``
  (returning the loss, a tensor or a dict with ``"loss"``) and
  ``configure_optimizers``, and a ``forward(x)`` returning logits
  ``[B, num_classes]`` (used for evaluation). The loop federates it as it
  is; ``--lr`` and ``--momentum`` do not apply to it.

Which strategies and DP modes each kind supports: :mod:`fedlight.compat`.
Every problem with a spec is a :class:`~fedlight.errors.ConfigError` of one
line that names the spec.
"""

from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import torch
from torch import nn

from fedlight.errors import ConfigError


class _ConvNet(nn.Module):
    def __init__(self, features: nn.Sequential, input_shape: tuple[int, int, int], hidden: int, num_classes: int):
        super().__init__()
        self.features = features
        with torch.no_grad():
            flat = self.features(torch.zeros(1, *input_shape)).numel()
        self.projection = nn.Sequential(nn.Flatten(), nn.Linear(flat, hidden), nn.ReLU())
        self.classifier = nn.Linear(hidden, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(self.features(x))

    def head(self, z: torch.Tensor) -> torch.Tensor:
        return self.classifier(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


def _image_shape(name: str, input_shape: Sequence[int]) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise ValueError(f"{name} needs images, input_shape (channels, height, width); got {tuple(input_shape)}")
    return tuple(int(d) for d in input_shape)


class LeafCNN(_ConvNet):
    """The FEMNIST CNN of LEAF (Caldas et al., arXiv:1812.01097).

    Two 5x5 convolutions (32 and 64 channels, "same" padding, 2x2 max-pool
    after each), a dense layer of 2048 units, and the classifier; 6.6M
    parameters for 28x28 inputs and 62 classes.
    """

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int):
        input_shape = _image_shape("leaf_cnn", input_shape)
        features = nn.Sequential(
            nn.Conv2d(input_shape[0], 32, kernel_size=5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, kernel_size=5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        )
        super().__init__(features, input_shape, hidden=2048, num_classes=num_classes)


class SmallCNN(_ConvNet):
    """A small 2-conv CNN for fast CPU experiments.

    Two 3x3 convolutions (16 and 32 channels, 2x2 max-pool after each), a
    dense layer of 128 units and the classifier; about 0.2M parameters for
    28x28 inputs and 62 classes.
    """

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int):
        input_shape = _image_shape("small_cnn", input_shape)
        features = nn.Sequential(
            nn.Conv2d(input_shape[0], 16, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        super().__init__(features, input_shape, hidden=128, num_classes=num_classes)


def _num_features(input_shape: Sequence[int]) -> int:
    if len(input_shape) == 0 or any(int(d) < 1 for d in input_shape):
        raise ValueError(f"input_shape must be non-empty and positive, got {tuple(input_shape)}")
    return math.prod(int(d) for d in input_shape)


class LogReg(nn.Module):
    """Logistic regression: one ``nn.Linear`` over the flattened input.

    FLamby's baseline for its tabular tasks (Heart Disease, TCGA-BRCA).
    With ``num_classes = 2`` it is binary logistic regression, one weight
    vector w and bias b: the logits are (0, w.x + b), so that softmax
    cross-entropy equals FLamby's sigmoid and BCE loss, with the same
    parameters and initialisation as its ``Linear(13, 1)`` (two free logits
    would double the effective learning rate of their difference). With
    more classes, one logit per class (multinomial). ``embed`` is the
    flattened input, ``head`` the linear layer.
    """

    def __init__(self, input_shape: Sequence[int], num_classes: int):
        super().__init__()
        self.flatten = nn.Flatten()
        self.binary = num_classes == 2
        self.linear = nn.Linear(_num_features(input_shape), 1 if self.binary else num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.flatten(x)

    def head(self, z: torch.Tensor) -> torch.Tensor:
        logits = self.linear(z)
        return torch.cat([torch.zeros_like(logits), logits], dim=1) if self.binary else logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


class MLP(nn.Module):
    """A multilayer perceptron over the flattened input: Linear + ReLU per hidden size, then the classifier.

    ``hidden`` is one size or a sequence of sizes (default ``(64,)``);
    ``embed`` is the last hidden layer's output (after its ReLU), ``head``
    the classifier. ``hidden=()`` is logistic regression.
    """

    def __init__(self, input_shape: Sequence[int], num_classes: int, hidden: int | Sequence[int] = (64,)):
        super().__init__()
        if isinstance(hidden, str):  # "32,16" from a command line
            hidden = [h for h in hidden.replace(" ", "").split(",") if h]
        sizes = [int(hidden)] if isinstance(hidden, int) else [int(h) for h in hidden]
        if any(h < 1 for h in sizes):
            raise ValueError(f"hidden sizes must be positive, got {sizes}")
        layers: list[nn.Module] = [nn.Flatten()]
        width = _num_features(input_shape)
        for size in sizes:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        self.hidden = tuple(sizes)
        self.body = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def head(self, z: torch.Tensor) -> torch.Tensor:
        return self.classifier(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


MODELS: dict[str, type[nn.Module]] = {
    "leaf_cnn": LeafCNN,
    "small_cnn": SmallCNN,
    "logreg": LogReg,
    "mlp": MLP,
}
_BUILTIN_NAMES = {cls: name for name, cls in MODELS.items()}


# --- specs -------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model spec: a built-in name or an import path, and the constructor's extra arguments."""

    class_path: str
    init_args: dict[str, Any] = field(default_factory=dict)

    @property
    def builtin(self) -> bool:
        return self.class_path in MODELS


def parse_model_spec(spec: str | Mapping[str, Any] | type | ModelSpec) -> ModelSpec:
    """Turn a spec (see the module docstring) into a :class:`ModelSpec`; checks its form only."""
    if isinstance(spec, ModelSpec):
        return spec
    if inspect.isclass(spec):
        name = _BUILTIN_NAMES.get(spec, f"{spec.__module__}:{spec.__qualname__}")
        return ModelSpec(name)
    if isinstance(spec, str):
        if not spec.strip():
            raise ConfigError("model: empty name; give a built-in name or an import path module:Class")
        return ModelSpec(spec.strip())
    if isinstance(spec, Mapping):
        unknown = sorted(set(spec) - {"class_path", "init_args"})
        if unknown:
            raise ConfigError(f"model {dict(spec)!r}: unknown keys {unknown}; expected class_path and init_args")
        class_path = spec.get("class_path")
        if not isinstance(class_path, str) or not class_path.strip():
            raise ConfigError(f"model {dict(spec)!r}: class_path must be a built-in name or an import path")
        init_args = spec.get("init_args") or {}
        if not isinstance(init_args, Mapping) or not all(isinstance(k, str) for k in init_args):
            raise ConfigError(f"model {class_path}: init_args must be a mapping of argument names to values")
        return ModelSpec(class_path.strip(), dict(init_args))
    raise ConfigError(f"model spec must be a name, an import path or a class_path mapping, got {type(spec).__name__}")


def describe_model(spec: str | Mapping[str, Any] | type | ModelSpec | nn.Module) -> str:
    """A short name for tags and run names: the built-in name or the class's own name."""
    if isinstance(spec, nn.Module):
        return _BUILTIN_NAMES.get(type(spec), type(spec).__name__)
    class_path = parse_model_spec(spec).class_path
    if class_path in MODELS:
        return class_path
    return class_path.replace(":", ".").rsplit(".", 1)[-1]


def model_name(model: nn.Module) -> str:
    """How error messages name a built model: the built-in name or module.Class."""
    cls = type(model)
    return _BUILTIN_NAMES.get(cls, f"{cls.__module__}.{cls.__qualname__}")


def _import_module(class_path: str, module_name: str):
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # the module itself (or a package above it) is missing, not something it imports
        if exc.name is not None and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            return None
        raise ConfigError(f"model {class_path}: importing {module_name} failed: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - any error while importing user code is the user's to fix
        raise ConfigError(f"model {class_path}: importing {module_name} failed: {type(exc).__name__}: {exc}") from exc


def resolve_class(class_path: str) -> Any:
    """The object an import path names: ``pkg.mod:Attr.Nested`` or ``pkg.mod.Attr`` (the longest importable module)."""
    if ":" in class_path:
        module_name, _, attr_path = class_path.partition(":")
        if not module_name or not attr_path:
            raise ConfigError(f"model {class_path}: an import path is module:Class")
        candidates = [(module_name, attr_path.split("."))]
    else:
        parts = class_path.split(".")
        if len(parts) < 2 or not all(parts):
            raise ConfigError(
                f"unknown model {class_path!r}; choose from {', '.join(MODELS)} or give an import path module:Class"
            )
        candidates = [(".".join(parts[:i]), parts[i:]) for i in range(len(parts) - 1, 0, -1)]
    for module_name, attrs in candidates:
        module = _import_module(class_path, module_name)
        if module is None:
            continue
        obj = module
        for depth, attr in enumerate(attrs):
            if not hasattr(obj, attr):
                owner = ".".join([module_name, *attrs[:depth]])
                raise ConfigError(f"model {class_path}: {owner} has no attribute {attr!r}")
            obj = getattr(obj, attr)
        return obj
    module_name = candidates[0][0]
    raise ConfigError(f"model {class_path}: module {module_name} is not importable (is it installed or on PYTHONPATH?)")


def model_kind(model_or_class: nn.Module | type) -> str:
    """``"lightning"`` for a LightningModule with its own training step, ``"module"`` for a plain nn.Module."""
    cls = model_or_class if inspect.isclass(model_or_class) else type(model_or_class)
    return "lightning" if issubclass(cls, L.LightningModule) else "module"


def is_lightning_module(model: nn.Module) -> bool:
    return model_kind(model) == "lightning"


def _check_class(class_path: str, obj: Any) -> type[nn.Module]:
    if not inspect.isclass(obj):
        raise ConfigError(f"model {class_path}: is a {type(obj).__name__}, not a class")
    if not issubclass(obj, L.LightningModule) and any(
        base.__name__ == "LightningModule" and base.__module__.startswith("pytorch_lightning") for base in obj.__mro__
    ):
        raise ConfigError(
            f"model {class_path}: subclasses pytorch_lightning.LightningModule; fedlight's Trainer needs "
            "lightning.LightningModule (import lightning as L; class ...(L.LightningModule))"
        )
    if not issubclass(obj, nn.Module):
        raise ConfigError(f"model {class_path}: is neither a torch.nn.Module nor a lightning.LightningModule")
    if issubclass(obj, L.LightningModule):
        missing = [hook for hook in ("training_step", "configure_optimizers") if getattr(obj, hook) is getattr(L.LightningModule, hook)]
        if missing:
            raise ConfigError(f"model {class_path}: a LightningModule needs its own {' and '.join(missing)}")
    if inspect.isabstract(obj):
        raise ConfigError(f"model {class_path}: is abstract")
    return obj


def _constructor_args(cls: type, init_args: dict[str, Any], input_shape: tuple[int, ...], num_classes: int) -> dict[str, Any]:
    kwargs = dict(init_args)
    try:
        parameters = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return kwargs
    named = {n for n, p in parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    if "input_shape" in named and "input_shape" not in kwargs:
        kwargs["input_shape"] = tuple(input_shape)
    if "num_classes" in named and "num_classes" not in kwargs:
        kwargs["num_classes"] = num_classes
    return kwargs


def _format_call(class_path: str, kwargs: dict[str, Any]) -> str:
    return f"{class_path}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"


def check_model_output(
    model: nn.Module, input_shape: Sequence[int], num_classes: int, *, name: str, example: torch.Tensor | None = None
) -> None:
    """Run ``model`` on a batch of 2 (zeros, or the first rows of ``example``) and check it returns ``[2, num_classes]``.

    The model runs in eval mode without gradients, and torch's global random
    state is restored afterwards, so that the check changes nothing a
    seeded run would see.
    """
    x = example[:2].clone() if example is not None and len(example) >= 1 else torch.zeros(2, *input_shape)
    was_training = model.training
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            model.eval()
            out = model(x)
    except Exception as exc:  # noqa: BLE001 - a model that cannot run one batch is a configuration problem
        raise ConfigError(
            f"model {name}: forward failed on a batch of shape {list(x.shape)}: {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor):
        raise ConfigError(
            f"model {name}: forward returned a {type(out).__name__}; it must return class logits [batch, {num_classes}]"
        )
    if tuple(out.shape) != (len(x), num_classes):
        raise ConfigError(
            f"model {name}: forward on a batch of shape {list(x.shape)} returned shape {list(out.shape)}, "
            f"expected class logits [{len(x)}, {num_classes}]"
        )
    if not torch.is_floating_point(out):
        raise ConfigError(f"model {name}: forward returned {out.dtype} values; class logits must be floating point")


def build_model(
    spec: str | Mapping[str, Any] | type | ModelSpec,
    input_shape: Sequence[int],
    num_classes: int,
    *,
    example: torch.Tensor | None = None,
) -> nn.Module:
    """Build the model a spec names (see the module docstring) and check its output on a dummy batch.

    ``example`` (optional): real inputs whose first rows replace the dummy
    zeros in the check.
    """
    parsed = parse_model_spec(spec)
    class_path = parsed.class_path
    input_shape = tuple(int(d) for d in input_shape)
    if inspect.isclass(spec) and spec not in _BUILTIN_NAMES:
        cls = _check_class(class_path, spec)
    elif parsed.builtin:
        cls = MODELS[class_path]
    else:
        cls = _check_class(class_path, resolve_class(class_path))
    kwargs = _constructor_args(cls, parsed.init_args, input_shape, num_classes)
    try:
        model = cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model {_format_call(class_path, kwargs)}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model {class_path}: constructing it returned a {type(model).__name__}, not an nn.Module")
    check_model_output(model, input_shape, num_classes, name=class_path, example=example)
    return model


def has_embed_head(model: nn.Module) -> bool:
    """Whether ``model`` exposes ``embed(x)`` and ``head(z)`` (MOON needs both)."""
    return callable(getattr(model, "embed", None)) and callable(getattr(model, "head", None))


__all__ = [
    "LeafCNN", "LogReg", "MLP", "MODELS", "ModelSpec", "SmallCNN", "build_model", "check_model_output",
    "describe_model", "has_embed_head", "is_lightning_module", "model_kind", "model_name", "parse_model_spec",
    "resolve_class",
]
