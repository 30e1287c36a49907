"""MAPLE embedders: `MapleConfig`, `MapleModel`, `MapleProcessor`, and `load_maple` to load any checkpoint as one.

Importing this package registers them with `AutoConfig`, `AutoModel` and `AutoProcessor`, and marks
them for `register_for_auto_class`, so every saved checkpoint carries the three source files and
loads with `trust_remote_code=True` where this package is not installed.
"""

from transformers import AutoConfig, AutoModel, AutoProcessor

from .configuration_maple import MapleConfig
from .loading import (
    BackboneLoadingError,
    ConfigOverrideError,
    MapleLoadError,
    load_maple,
    load_maple_model,
    load_maple_processor,
)
from .modeling_maple import MapleModel, MapleOutput, MaplePreTrainedModel
from .processing_maple import MapleProcessor

AutoConfig.register(MapleConfig.model_type, MapleConfig, exist_ok=True)
AutoModel.register(MapleConfig, MapleModel, exist_ok=True)
AutoProcessor.register(MapleConfig, MapleProcessor, exist_ok=True)

MapleConfig.register_for_auto_class()
MapleModel.register_for_auto_class("AutoModel")
MapleProcessor.register_for_auto_class("AutoProcessor")

__all__ = [
    "BackboneLoadingError",
    "ConfigOverrideError",
    "MapleConfig",
    "MapleLoadError",
    "MapleModel",
    "MapleOutput",
    "MaplePreTrainedModel",
    "MapleProcessor",
    "load_maple",
    "load_maple_model",
    "load_maple_processor",
]
