"""memlm's own checkpoints as a source: the config as it is, every tensor under its own name. This makes
``from_pretrained`` and ``convert(..., to=...)`` (export) take memlm checkpoints like any other source."""

from __future__ import annotations

from memlm.convert.registry import ConversionError, Importer, register_importer
from memlm.models.configuration_memlm import MemLMConfig


@register_importer("memlm")
class MemLMImporter(Importer):
    def config(self, checkpoint, drop):
        try:
            return MemLMConfig.from_dict(checkpoint.config)
        except ValueError as error:
            raise ConversionError(f"{checkpoint.directory / 'config.json'}: {error}") from error

    def weights(self, checkpoint, config, tensors):
        return {name: tensors.pop(name) for name in list(tensors)}
