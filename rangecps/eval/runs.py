"""What a run folder or checkpoint holds for evaluation and inference: the checkpoint to read, its config with
``--set`` overrides, the names of its nets, which net to score, and the nets rebuilt in eval mode.

``rangecps-eval``, :class:`rangecps.deploy.Segmenter` and ``rangecps-export`` all load runs through
:func:`load_run`, so a checkpoint that loads in one loads in all.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from rangecps.checkpoint import load_checkpoint
from rangecps.config import Config, ConfigError, from_dict, parse_override, to_dict
from rangecps.methods import METHODS
from rangecps.models import build_model


@dataclass
class LoadedRun:
    """A checkpoint ready to evaluate: its config (with ``--set`` overrides), metadata and networks (eval mode)."""

    path: Path
    cfg: Config
    state: dict[str, Any]
    nets: list[nn.Module]

    @property
    def step(self) -> int:
        return int(self.state["step"])

    @property
    def revision(self) -> str:
        return str(self.state.get("revision") or self.state["derived"].get("revision", "unknown"))


def find_checkpoint(path: str | Path) -> Path:
    """``path`` itself if it is a file; for a run folder its ``best.pt``, else its ``last.pt``."""
    path = Path(path)
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"{path}: run folder holds neither best.pt nor last.pt")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such run folder or checkpoint")
    return path


def apply_overrides(cfg: Config, overrides: list[str] | tuple[str, ...]) -> Config:
    """``cfg`` with ``section.key=value`` overrides, checked like ``rangecps-train --set``."""
    values = to_dict(cfg)
    for text in overrides:
        keys, value = parse_override(text)
        node = values
        for key in keys[:-1]:
            if not isinstance(node.get(key, {}), dict):
                raise ConfigError(f"--set {text!r}: '{key}' is a value, not a section")
            node = node.setdefault(key, {})
        node[keys[-1]] = value
    return from_dict(values, "--set")


def net_names(state: dict[str, Any]) -> tuple[str, ...]:
    """The names of a checkpoint's nets, in order (checkpoints from before Mean Teacher hold a / a, b)."""
    return tuple(state.get("net_names") or "ab"[: len(state["nets"])])


def choose_net(requested: str | None, names: tuple[str, ...], method: str, path: Path) -> str:
    """The net to score: one of ``names`` or ``ensemble`` (2 nets). None: the method's default (``METHODS``)."""
    if requested is None:
        return METHODS[method].evaluate if method in METHODS else names[0]
    if requested == "ensemble" and len(names) == 2:
        return requested
    if requested not in names:
        choices = ", ".join(names) + (" or ensemble" if len(names) == 2 else "")
        raise ValueError(
            f"{path}: holds the net(s) {', '.join(names)} of a {method} run; --net takes {choices}"
        )
    return requested


def load_run(path: str | Path, overrides: list[str] | tuple[str, ...] = (), device: str = "cpu") -> LoadedRun:
    """Read a checkpoint (``weights_only=True``) and rebuild its networks on ``device``, in eval mode."""
    path = find_checkpoint(path)
    state = load_checkpoint(path, "cpu")
    missing = [k for k in ("derived", "label_names") if k not in state]
    if missing:
        raise ValueError(f"{path}: checkpoint lacks {missing}; it was not written by rangecps-train")
    cfg = apply_overrides(from_dict(state["config"], f"{path}: config"), overrides)
    derived = state["derived"]
    if not 1 <= len(state["nets"]) <= 2:
        raise ValueError(f"{path}: holds {len(state['nets'])} networks; expected 1 or 2")
    nets = []
    for name, weights in zip(net_names(state), state["nets"], strict=True):
        net = build_model(cfg.model.name, derived["in_channels"], derived["num_classes"], cfg.model.width)
        try:
            net.load_state_dict(weights)
        except RuntimeError as e:
            raise ValueError(
                f"{path}: network {name} does not fit model {cfg.model.name} width {cfg.model.width}: {e}"
            ) from e
        nets.append(net.to(device).eval())
    return LoadedRun(path=path, cfg=cfg, state=state, nets=nets)
