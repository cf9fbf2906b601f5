"""Which models exist and how to run them."""

from modelyard.catalog.catalog import Catalog
from modelyard.catalog.spec import Footprint, ModelKind, ModelSpec

__all__ = ["Catalog", "Footprint", "ModelKind", "ModelSpec"]
