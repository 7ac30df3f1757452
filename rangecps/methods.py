"""The training methods by name: which nets each trains, keeps and evaluates. Knows no tensors, so that training,
evaluation and inference read one table (the losses of each method are in :mod:`rangecps.cps`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Method:
    """How a method is built, checkpointed and evaluated.

    Attributes:
        nets: names of the nets a run trains and a checkpoint holds, in order (``rangecps-eval --net`` takes them).
        trained: the first ``trained`` nets learn by gradient (one optimiser each); the rest are EMA teachers.
        evaluate: the net ``rangecps-eval`` scores by default.
        mixes: whether the step draws LaserMix partitions.
    """

    nets: tuple[str, ...]
    trained: int
    evaluate: str
    mixes: bool = False

    @property
    def unlabeled(self) -> bool:
        return len(self.nets) > 1


METHODS: dict[str, Method] = {
    "sup_only": Method(("a",), 1, "a"),
    "mean_teacher": Method(("student", "teacher"), 1, "teacher"),
    "cps": Method(("a", "b"), 2, "a"),
    "lasermix": Method(("student", "teacher"), 1, "teacher", mixes=True),
    "cps_lasermix": Method(("a", "b"), 2, "a", mixes=True),
}


def method_spec(method: str, num_nets: int) -> Method:
    """``METHODS[method]``, refusing an unknown method or a wrong number of nets with a one-line ValueError."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(METHODS)}")
    spec = METHODS[method]
    if num_nets != len(spec.nets):
        raise ValueError(f"{method} takes {len(spec.nets)} net(s) ({', '.join(spec.nets)}), got {num_nets}")
    return spec
