"""The mean-field experiment (docs/mean-field.md; Lu, Ma, Lu, Lu, Ying, arXiv 2003.05508).

Runs (stage 1):

- ``train`` (one per architecture, scheme and seed): a small convolutional ResNet or ResNeXt
  (:mod:`reslim._src.models.conv_resnet`) trained on images (digits, CIFAR-10/100 from disk) by
  SGD with momentum, a schedule and augmentation, under a training scheme
  (:mod:`reslim._src.training.schemes`); metrics: test and train accuracy, the loss per epoch, the
  probe loss right before and right after each reordering (and at the surrogate-to-ResNet switch).
  Seeds pair the schemes: a seed fixes the initialisation, data order and augmentation alike.
- ``landscape`` (one per depth L and width M): ``landscape.seeds`` random initialisations of the
  built-in mean-field ResNet (``mlu``) trained by full-batch GD on a random problem it can
  interpolate; metrics: the final relative training loss of each initialisation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import Field, PositiveInt, field_validator, model_validator

from .registry import ExperimentKind, Run, RunResult, SpecLike, register_experiment, run_key
from .runs import RunConfig
from .spec import SpecBase, StrictModel

ARCHS = ("resnet", "resnext")
Role = Literal["train", "landscape"]
Arch = Literal["resnet", "resnext"]
SchemeName = Literal["plain", "random-reorder", "sort-reorder", "surrogate-pretrain"]


def _roles() -> list[Role]:
    return ["train", "landscape"]


def _archs() -> list[Arch]:
    return ["resnet", "resnext"]


def _schemes() -> list[SchemeName]:
    return ["plain", "random-reorder", "sort-reorder", "surrogate-pretrain"]


class MFDataSpec(StrictModel):
    kind: Literal["digits", "cifar10", "cifar100"] = "digits"
    dir: str = Field("", description="folder holding the CIFAR binary version (cifar10/cifar100)")
    n_train: int = Field(0, ge=0, description="training images used (0: all)")
    n_test: int = Field(0, ge=0, description="test images used (0: all)")
    seed: int = 0


class MFModelSpec(StrictModel):
    width: PositiveInt = 8
    blocks: PositiveInt = Field(3, description="residual blocks per stage (the transition not counted)")
    stages: PositiveInt = 2
    cardinality: PositiveInt = 2
    norm: Literal["batch", "none"] = "batch"
    branch_scale: Literal["1", "1/n"] = "1"


class MFTrainSpec(StrictModel):
    epochs: PositiveInt = 8
    batch_size: PositiveInt = 64
    lr: float = Field(0.1, gt=0, allow_inf_nan=False)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    schedule: Literal["cosine", "step"] = "cosine"
    pad: int = Field(1, ge=0)
    flip: bool = False
    probe: PositiveInt = 512
    device: str = "auto"


class MFSchemeSpec(StrictModel):
    every: PositiveInt = 1
    stop: float = Field(0.75, gt=0, le=1)
    fraction: float = Field(0.25, gt=0, lt=1, description="surrogate-pretrain: fraction of the epochs")
    statistic: Literal["norm"] = "norm"


class LandscapeSpec(StrictModel):
    L: list[PositiveInt] = Field(default_factory=lambda: [1, 4, 16], min_length=1)
    M: list[PositiveInt] = Field(default_factory=lambda: [1, 4, 16], min_length=1)
    D: PositiveInt = 4
    N: PositiveInt = 16
    d_in: PositiveInt = 4
    d_out: PositiveInt = 2
    seeds: PositiveInt = 32
    steps: PositiveInt = 1500
    lr: float = Field(1.0, gt=0, allow_inf_nan=False)
    threshold: float = Field(1e-3, gt=0, lt=1, description="reached the global minimum (zero loss) if "
                             "the final loss is below threshold x the initial loss")

    @field_validator("L", "M")
    @classmethod
    def _sorted(cls, v):
        return sorted(set(v))


class MFAnalysisSpec(StrictModel):
    level: float = Field(0.95, gt=0, lt=1)


class MeanFieldSpec(SpecBase):
    """Spec of the ``mean-field`` kind."""

    kind: Literal["mean-field"] = "mean-field"
    roles: list[Role] = Field(default_factory=_roles, min_length=1)
    archs: list[Arch] = Field(default_factory=_archs, min_length=1)
    schemes: list[SchemeName] = Field(default_factory=_schemes, min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2, 3], min_length=1)
    data: MFDataSpec = Field(default_factory=MFDataSpec)
    model: MFModelSpec = Field(default_factory=MFModelSpec)
    train: MFTrainSpec = Field(default_factory=MFTrainSpec)
    scheme: MFSchemeSpec = Field(default_factory=MFSchemeSpec)
    landscape: LandscapeSpec = Field(default_factory=LandscapeSpec)
    analysis: MFAnalysisSpec = Field(default_factory=MFAnalysisSpec)

    @field_validator("seeds")
    @classmethod
    def _unique(cls, v):
        return sorted(set(v))

    @field_validator("schemes")
    @classmethod
    def _plain_first(cls, v):
        if "plain" not in v:
            raise ValueError("must include 'plain' (the baseline every scheme is paired with)")
        return ["plain"] + [s for s in dict.fromkeys(v) if s != "plain"]

    @model_validator(mode="after")
    def _data_on_disk(self) -> MeanFieldSpec:
        """Fail at spec time (one line naming data.dir) when CIFAR is requested but not on disk."""
        if "train" in self.roles and self.data.kind != "digits":
            from ..training.cifar import SETS, _locate

            _locate(self.data.dir or None, SETS[self.data.kind])
        return self


@dataclass(frozen=True)
class TrainRunConfig(RunConfig):
    kind: str
    role: str
    arch: str
    scheme_name: str
    seed: int
    data: MFDataSpec
    model: MFModelSpec
    train: MFTrainSpec
    scheme: MFSchemeSpec


@dataclass(frozen=True)
class LandscapeRunConfig(RunConfig):
    kind: str
    role: str
    L: int
    M: int
    dtype: str
    landscape: LandscapeSpec


def make_model(arch: str, m: MFModelSpec, in_channels: int, classes: int, seed: int):
    from ..models.conv_resnet import ConvResNet

    return ConvResNet(in_channels=in_channels, classes=classes, width=m.width, blocks=m.blocks,
                      stages=m.stages, block="basic" if arch == "resnet" else "next",
                      cardinality=m.cardinality, norm=m.norm, branch_scale=m.branch_scale, seed=seed)


def make_scheme_of(name: str, s: MFSchemeSpec):
    from ..training.schemes import make_scheme

    if name in ("random-reorder",):
        return make_scheme(name, every=s.every, stop=s.stop)
    if name == "sort-reorder":
        return make_scheme(name, every=s.every, stop=s.stop, statistic=s.statistic)
    if name == "surrogate-pretrain":
        return make_scheme(name, fraction=s.fraction)
    return make_scheme(name)


_DATA: dict[str, Any] = {}


def load_data(d: MFDataSpec):
    """The run's image data (cached per process)."""
    from ..training.image_training import image_data

    key = run_key(d.model_dump(mode="json"))
    if key not in _DATA:
        _DATA.clear()
        _DATA[key] = image_data(d.kind, d.dir or None, n_train=d.n_train or None, n_test=d.n_test or None,
                                seed=d.seed)
    return _DATA[key]


def _image_shape(d: MFDataSpec) -> tuple[int, int, int]:
    return (1, 8, 8) if d.kind == "digits" else (3, 32, 32)


class MeanField(ExperimentKind):
    spec_model = MeanFieldSpec
    report_module = "reslim._src.report.mean_field"

    def expand(self, spec: SpecLike) -> list[Run]:
        assert isinstance(spec, MeanFieldSpec)
        runs = []
        if "train" in spec.roles:
            C, H, W = _image_shape(spec.data)
            n = spec.data.n_train or (1348 if spec.data.kind == "digits" else 50000)
            m = spec.model
            # every stage costs about the same (channels x2, pixels /4): 2 convs per block
            per_image = 2.0 * 9 * m.width**2 * H * W * 2 * m.blocks * m.stages
            cost = 3.0 * per_image * n * spec.train.epochs
            for arch in spec.archs:
                for name in spec.schemes:
                    for seed in spec.seeds:
                        cfg = TrainRunConfig(self.name, "train", arch, name, seed, spec.data, spec.model,
                                             spec.train, spec.scheme)
                        runs.append(Run(self.name, cfg.to_dict(), group=cfg.key, stage=1, cost=cost,
                                        mem=1e8, label=f"{arch} {name} seed {seed}"))
        if "landscape" in spec.roles:
            ls = spec.landscape
            for L in ls.L:
                for M in ls.M:
                    lc = LandscapeRunConfig(self.name, "landscape", L, M, spec.dtype, ls)
                    runs.append(Run(self.name, lc.to_dict(), group=lc.key, stage=1,
                                    cost=8.0 * L * M * ls.D * ls.N * ls.seeds * ls.steps + 1e6 * L,
                                    mem=8.0 * 2 * L * M * ls.D * ls.seeds, label=f"landscape L={L} M={M}"))
        return runs

    def execute(self, runs: list[Run]) -> list[RunResult]:
        out = []
        for r in runs:
            try:
                out.append(self._train(r) if r.config["role"] == "train" else self._landscape(r))
            except ValueError as err:
                out.append(RunResult(r.key, "failed", error=str(err)))
        return out

    def _train(self, run: Run) -> RunResult:
        from ..training.image_training import TrainConfig, train_image_classifier

        c = TrainRunConfig.from_dict(run.config)
        data = load_data(c.data)
        model = make_model(c.arch, c.model, data.channels, data.classes, c.seed)
        t = c.train
        cfg = TrainConfig(epochs=t.epochs, batch_size=t.batch_size, lr=t.lr, momentum=t.momentum,
                          weight_decay=t.weight_decay, schedule=t.schedule, pad=t.pad, flip=t.flip,
                          probe=t.probe, device=t.device)
        res = train_image_classifier(model, data, make_scheme_of(c.scheme_name, c.scheme), cfg, seed=c.seed)
        metrics = {"test_accuracy": res.test_accuracy, "train_accuracy": res.train_accuracy,
                   "final_loss": res.final_loss, "epoch_loss": res.epoch_loss,
                   "epoch_test_accuracy": res.epoch_test_accuracy, "events": res.events,
                   "device": res.device, "n_params": sum(p.numel() for p in model.parameters()),
                   "n_train": len(data.X), "n_test": len(data.X_test)}
        ok = np.isfinite(res.final_loss)
        return RunResult(run.key, "done" if ok else "diverged", metrics, seconds=res.seconds)

    def _landscape(self, run: Run) -> RunResult:
        from ..models.resnet import ResNet
        from ..scaling.shapes import Shape
        from ..training.data import gaussian_data
        from ..training.trainer import train

        t0 = time.perf_counter()
        c = LandscapeRunConfig.from_dict(run.config)
        ls = c.landscape
        data = gaussian_data(N=ls.N, d_in=ls.d_in, d_out=ls.d_out, seed=0)
        net = ResNet(Shape(c.L, c.M, ls.D), d_in=ls.d_in, d_out=ls.d_out,
                     seeds=[1000 + s for s in range(ls.seeds)], dtype=c.dtype)
        tr = train(net, data, steps=ls.steps, lr=ls.lr, loss="mean", record=("loss",))
        loss = np.asarray(tr.loss, dtype=float)
        rel = loss[-1] / loss[0]
        metrics = {"relative_loss": [float(v) if np.isfinite(v) else None for v in rel],
                   "initial_loss": [float(v) for v in loss[0]],
                   "params": 2 * c.L * c.M * ls.D, "targets": ls.N * ls.d_out,
                   "diverged": int((np.asarray(tr.diverged_at) >= 0).sum())}
        return RunResult(run.key, "done", metrics, seconds=time.perf_counter() - t0)


register_experiment("mean-field", MeanField())
