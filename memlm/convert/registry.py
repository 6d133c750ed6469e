"""The converters' registry: one importer class per source family, keyed by the source's ``model_type``.

An importer maps a source checkpoint onto memlm in two steps, both given the :class:`~memlm.convert.checkpoint.
Checkpoint`:

1. ``config(checkpoint, drop) -> MemLMConfig`` reads only ``config.json``: everything memlm cannot represent
   (a MoE MLP, an unknown rope type, a vision tower the user did not ``drop``) raises :class:`ConversionError`
   naming the source field and its value here, before any tensor is read or any file written.
2. ``weights(checkpoint, config, tensors) -> dict`` builds memlm's state dict from the source tensors, popping
   every source tensor it consumes from ``tensors``. The framework then refuses the conversion if a source tensor
   is left over (nothing is silently dropped), except those under the importer's ``droppable`` prefixes of the
   parts the user dropped.

Exporters are the reverse: ``config(config: MemLMConfig) -> dict`` (the target's ``config.json``; raises before
any tensor is read) and ``weights(config, state) -> dict`` (the target's tensors from memlm's state dict).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from memlm.convert.checkpoint import Checkpoint
    from memlm.models.configuration_memlm import MemLMConfig


class ConversionError(ValueError):
    """A source (or destination) memlm cannot convert; the message names the field, its value and what is
    allowed. Raised before anything is written."""


# Parts of a source that do not change its language model and that memlm has no module for; dropping one is an
# explicit opt-in (``drop=("vision",)``, ``memlm convert --drop vision``).
DROP_FLAGS = {
    "vision": "the vision tower of a vision-language checkpoint (the text model is imported)",
    "mtp": "multi-token-prediction head weights (mtp.*), used only for speculative decoding",
}


class Importer:
    """Base of the importers (see the module docstring). ``droppable`` maps each :data:`DROP_FLAGS` flag this
    family knows to the source tensor name prefixes it covers, e.g. ``{"mtp": ("mtp.",)}``."""

    droppable: dict[str, tuple[str, ...]] = {}

    def config(self, checkpoint: Checkpoint, drop: frozenset[str]) -> MemLMConfig:
        raise NotImplementedError

    def weights(
        self, checkpoint: Checkpoint, config: MemLMConfig, tensors: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        raise NotImplementedError


class Exporter:
    """Base of the exporters (see the module docstring)."""

    def config(self, config: MemLMConfig) -> dict:
        raise NotImplementedError

    def weights(self, config: MemLMConfig, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError


IMPORTERS: dict[str, type[Importer]] = {}
EXPORTERS: dict[str, type[Exporter]] = {}


def _register(table: dict, base: type, names: tuple[str, ...]):
    def decorator(cls):
        if not issubclass(cls, base):
            raise TypeError(f"{cls.__name__} must subclass memlm.convert.registry.{base.__name__}")
        for name in names:
            if name in table:
                raise ValueError(f"{name!r} is already registered to {table[name].__name__}")
            table[name] = cls
        return cls

    return decorator


def register_importer(*model_types: str):
    """Class decorator: the :class:`Importer` of the sources whose ``config.json`` has one of ``model_types``."""
    return _register(IMPORTERS, Importer, model_types)


def register_exporter(*targets: str):
    """Class decorator: the :class:`Exporter` of ``convert(..., to=target)``."""
    return _register(EXPORTERS, Exporter, targets)


def importer_for(source_config: dict, source: str) -> Importer:
    """The importer of a source's ``config.json`` (its ``model_type``); ConversionError if none."""
    model_type = source_config.get("model_type")
    if model_type not in IMPORTERS:
        raise ConversionError(f"{source}: config.json has model_type={model_type!r}, which memlm cannot import; "
                              f"supported: {sorted(IMPORTERS)}")
    return IMPORTERS[model_type]()


def exporter_for(target: str) -> Exporter:
    if target not in EXPORTERS:
        raise ConversionError(f"to={target!r} is no export target; allowed: {sorted(EXPORTERS)}")
    return EXPORTERS[target]()


def check_drop(drop) -> frozenset[str]:
    """``drop`` as a set of :data:`DROP_FLAGS` flags; an unknown flag raises ConversionError."""
    flags = frozenset([drop] if isinstance(drop, str) else drop)
    unknown = sorted(flags - set(DROP_FLAGS))
    if unknown:
        raise ConversionError(f"drop={unknown} is unknown; allowed: {sorted(DROP_FLAGS)}")
    return flags
