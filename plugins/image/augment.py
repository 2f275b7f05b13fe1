"""Image augmenters (training split only): albumentations and imgaug pipelines declared in config,
timm's training transform (random resized crop, flips, RandAugment, random erasing) and
mixup/cutmix with soft targets (timm's ``Mixup``).

Each pipeline is built and dry-run on a small image when the config is read, so an unknown
transform, a wrong parameter or a transform that cannot run here is a one-line config error
before anything is written.
"""

from __future__ import annotations

import difflib
import inspect
import random
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from tuneforge.components import Augmenter, StrictConfig

Step = str | dict[str, Any]


class StepError(ValueError):
    """A bad pipeline step; the pipeline prefixes the augmenter's key (``augmenters[0]``)."""

    def __init__(self, key: str, problem: str) -> None:
        self.key, self.problem = key, problem
        super().__init__(f"{key}: {problem}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def _parse_step(step: Step, key: str) -> tuple[str, dict[str, Any]]:
    """``"Name"``, ``{name: Name, **params}`` or ``{Name: {params}}`` -> (name, params)."""
    if isinstance(step, str):
        return step, {}
    if "name" in step:
        params = {k: v for k, v in step.items() if k != "name"}
        return str(step["name"]), params
    if len(step) == 1:
        ((name, params),) = step.items()
        if params is None:
            return str(name), {}
        if isinstance(params, dict):
            return str(name), dict(params)
        raise StepError(key, f"parameters of {name!r} must be a mapping, got {params!r}")
    raise StepError(
        key, "write a step as Name, {name: Name, param: value} or {Name: {param: value}}"
    )


def _build_steps(
    steps: list[Any], field: str, valid: dict[str, Any], kind: str, make: Callable
) -> Any:
    """``(key, name, instance)`` for each configured step: the name checked against ``valid``
    (close names suggested), the parameters against its signature, then ``make(cls, params)``."""
    for i, step in enumerate(steps):
        key = f"{field}[{i}]"
        name, params = _parse_step(step, key)
        if name not in valid:
            raise _unknown(name, sorted(valid), key, kind)
        _check_params(valid[name], params, key, name)
        try:
            instance = make(valid[name], params)
        except Exception as exc:
            raise StepError(key, f"{name}: {_first_line(exc)}") from None
        yield key, name, instance


def _check_params(cls: Any, params: dict[str, Any], key: str, label: str) -> None:
    sig = inspect.signature(cls.__init__)
    valid = [
        n
        for n, p in sig.parameters.items()
        if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    for name in params:
        if name not in valid:
            close = difflib.get_close_matches(name, valid, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise StepError(
                f"{key}.{name}",
                f"unknown parameter of {label}; {hint}valid: {', '.join(valid) or 'none'}",
            )


def _unknown(name: str, valid: list[str], key: str, what: str) -> StepError:
    close = difflib.get_close_matches(name, valid, n=3)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    return StepError(key, f"unknown {what} {name!r}; {hint}valid: {', '.join(valid)}")


def _dry_run(fn: Any, key: str, what: str) -> None:
    """Run a built pipeline on small RGB and grayscale images; any failure is a config error."""
    rng = np.random.default_rng(0)
    for shape in ((40, 48, 3), (40, 48)):
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        try:
            out = fn(image)
        except StepError:
            raise
        except Exception as exc:
            raise StepError(
                key, f"{what} fails on a test image here ({_first_line(exc)})"
            ) from None
        if not isinstance(out, np.ndarray) or out.dtype != np.uint8:
            raise StepError(key, f"{what} does not return a uint8 image")


def _as_image(out: np.ndarray, like: np.ndarray) -> np.ndarray:
    if out.ndim == 3 and out.shape[-1] == 1 and like.ndim == 2:
        out = out[..., 0]
    return out


# -- albumentations -----------------------------------------------------------------------


def albumentations_transforms() -> dict[str, Any]:
    """Name -> class of every albumentations transform that works on an image alone."""
    import albumentations as A

    out = {}
    for name in dir(A):
        obj = getattr(A, name)
        if (
            inspect.isclass(obj)
            and issubclass(obj, A.BasicTransform)
            and not inspect.isabstract(obj)
            and name[0].isupper()
            and obj not in (A.BasicTransform, A.ImageOnlyTransform, A.DualTransform)
        ):
            out[name] = obj
    return out


class Albumentations(Augmenter):
    """An albumentations ``Compose`` of named transforms, e.g.
    ``transforms: [HorizontalFlip, {name: Rotate, limit: 15, p: 0.5}]``."""

    modalities: ClassVar[frozenset[str]] = frozenset({"image"})

    class Config(StrictConfig):
        transforms: list[Step] = Field(
            min_length=1, description="transform names, or {name: Name, param: value} mappings"
        )
        p: float = Field(1.0, ge=0, le=1, description="probability of applying the pipeline")

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        import albumentations as A

        steps = [
            step
            for _, _, step in _build_steps(
                self.config.transforms,
                "transforms",
                albumentations_transforms(),
                "albumentations transform",
                lambda cls, params: cls(**params),
            )
        ]
        self.compose = A.Compose(steps, p=self.config.p, seed=0)
        self._seeded: Any = None
        _dry_run(
            lambda im: _as_image(self.compose(image=im)["image"], im),
            "transforms",
            "the albumentations pipeline",
        )

    def __call__(self, example: dict[str, Any], rng: random.Random) -> dict[str, Any]:
        if self._seeded is not rng:  # one seed per worker's RNG
            self.compose.set_random_seed(rng.randrange(2**31))
            self._seeded = rng
        image = example["image"]
        return {**example, "image": _as_image(self.compose(image=image)["image"], image)}


# -- imgaug -------------------------------------------------------------------------------


def import_imgaug() -> Any:
    """``imgaug.augmenters``; imgaug 0.4 reads ``np.sctypes``, which NumPy 2 removed."""
    if not hasattr(np, "sctypes") or "sctypes" not in np.__dict__:
        np.sctypes = {  # type: ignore[attr-defined]
            "int": [np.int8, np.int16, np.int32, np.int64],
            "uint": [np.uint8, np.uint16, np.uint32, np.uint64],
            "float": [np.float16, np.float32, np.float64],
            "complex": [np.complex64, np.complex128],
            "others": [bool, object, bytes, str, np.void],
        }
    try:
        import imgaug.augmenters as iaa
    except Exception as exc:  # pragma: no cover - depends on the installed stack
        raise StepError("imgaug", f"imgaug cannot be imported here ({_first_line(exc)})") from None
    return iaa


def _imgaug_value(value: Any) -> Any:
    """YAML lists of two numbers are imgaug ranges (tuples); ``{choice: [...]}`` is a list."""
    if isinstance(value, dict) and set(value) == {"choice"}:
        return list(value["choice"])
    if isinstance(value, list):
        return tuple(_imgaug_value(v) for v in value)
    if isinstance(value, dict):
        return {k: _imgaug_value(v) for k, v in value.items()}
    return value


class Imgaug(Augmenter):
    """An imgaug ``Sequential`` of named augmenters, e.g.
    ``augmenters: [{Fliplr: {p: 0.5}}, {name: Affine, rotate: [-15, 15]}]``."""

    modalities: ClassVar[frozenset[str]] = frozenset({"image"})

    class Config(StrictConfig):
        augmenters: list[Step] = Field(
            min_length=1,
            description="imgaug augmenter names or mappings; [a, b] is a range, {choice: [..]} a set",
        )
        random_order: bool = False

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        iaa = import_imgaug()
        valid = {
            n: getattr(iaa, n)
            for n in dir(iaa)
            if inspect.isclass(getattr(iaa, n))
            and issubclass(getattr(iaa, n), iaa.Augmenter)
            and n[0].isupper()
            and not inspect.isabstract(getattr(iaa, n))
        }
        steps = []
        for key, name, step in _build_steps(
            self.config.augmenters,
            "augmenters",
            valid,
            "imgaug augmenter",
            lambda cls, params: cls(**{k: _imgaug_value(v) for k, v in params.items()}),
        ):
            try:  # some augmenters fail only when run (ElasticTransformation on OpenCV 5)
                step.deterministic = False
                _dry_run(lambda im, s=step: s.augment_image(im), key, f"imgaug's {name}")
            except StepError as exc:
                raise StepError(
                    key, f"{exc.problem}; leave it out or pick another augmenter"
                ) from None
            steps.append(step)
        self.seq = iaa.Sequential(steps, random_order=self.config.random_order)
        self._seeded: Any = None

    def __call__(self, example: dict[str, Any], rng: random.Random) -> dict[str, Any]:
        if self._seeded is not rng:
            self.seq.seed_(rng.randrange(2**31))
            self._seeded = rng
        image = example["image"]
        return {**example, "image": _as_image(self.seq.augment_image(image), image)}


# -- timm training transform and mixup ----------------------------------------------------


class TimmAugment(Augmenter):
    """timm's training transform in place of the eval one: random resized crop, flips, colour
    jitter, AutoAugment/RandAugment (``auto_augment: rand-m9-mstd0.5``) and random erasing."""

    modalities: ClassVar[frozenset[str]] = frozenset({"image"})
    #: The task uses :meth:`options` to build the train split's transform.
    replaces_transform: ClassVar[bool] = True

    class Config(StrictConfig):
        scale: tuple[float, float] = Field((0.08, 1.0), description="random resized crop area")
        ratio: tuple[float, float] = Field((3 / 4, 4 / 3), description="crop aspect ratio range")
        hflip: float = Field(0.5, ge=0, le=1)
        vflip: float = Field(0.0, ge=0, le=1)
        color_jitter: float | None = Field(0.4, ge=0)
        auto_augment: str | None = Field(None, description="e.g. rand-m9-mstd0.5-inc1, augmix-m5")
        re_prob: float = Field(0.0, ge=0, le=1, description="random erasing probability")

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        from timm.data import create_transform

        try:
            create_transform(input_size=32, is_training=True, **self.options())
        except Exception as exc:
            raise StepError("auto_augment", _first_line(exc)) from None

    def options(self) -> dict[str, Any]:
        c = self.config
        return {
            "scale": tuple(c.scale),
            "ratio": tuple(c.ratio),
            "hflip": c.hflip,
            "vflip": c.vflip,
            "color_jitter": c.color_jitter if c.color_jitter else None,
            "auto_augment": c.auto_augment,
            "re_prob": c.re_prob,
        }

    def __call__(self, example: dict[str, Any], rng: random.Random) -> dict[str, Any]:
        return example  # applied by the dataset's transform


class MixupCutmix(Augmenter):
    """Mixup and/or cutmix of training batches with soft targets (timm ``Mixup``)."""

    modalities: ClassVar[frozenset[str]] = frozenset({"image"})
    #: Applied by the collate function to whole training batches.
    batch_level: ClassVar[bool] = True
    #: mixes one-hot class targets (soft cross-entropy): single-label classification only
    problems: ClassVar[tuple[str, ...]] = ("classification",)

    class Config(StrictConfig):
        mixup_alpha: float = Field(0.8, ge=0, description="0 disables mixup")
        cutmix_alpha: float = Field(1.0, ge=0, description="0 disables cutmix")
        prob: float = Field(1.0, ge=0, le=1, description="probability of mixing a batch")
        switch_prob: float = Field(0.5, ge=0, le=1, description="cutmix instead of mixup")
        mode: Literal["batch", "pair", "elem"] = "batch"
        label_smoothing: float = Field(0.1, ge=0, lt=1)

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        if self.config.mixup_alpha == 0 and self.config.cutmix_alpha == 0:
            raise StepError("mixup_alpha", "mixup_alpha and cutmix_alpha are both 0")

    def params(self, num_classes: int) -> tuple[tuple[str, Any], ...]:
        c = self.config
        return (
            ("mixup_alpha", c.mixup_alpha),
            ("cutmix_alpha", c.cutmix_alpha),
            ("prob", c.prob),
            ("switch_prob", c.switch_prob),
            ("mode", c.mode),
            ("label_smoothing", c.label_smoothing),
            ("num_classes", num_classes),
        )

    def __call__(self, example: dict[str, Any], rng: random.Random) -> dict[str, Any]:
        return example  # applied to whole batches by the collate function
