"""Data sources, partitioners and quality injectors."""

from fedlight.data.federated import ClientData, FederatedData, build_federated_data
from fedlight.data.sources import SOURCES, SourceData, SourceOptions, load_source

__all__ = [
    "SOURCES",
    "ClientData",
    "FederatedData",
    "SourceData",
    "SourceOptions",
    "build_federated_data",
    "load_source",
]
