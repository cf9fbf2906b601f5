"""Which models are loaded, who waits, who is evicted."""

from modelyard.catalog.catalog import CatalogChange
from modelyard.scheduler.budget import estimate
from modelyard.scheduler.scheduler import (
    UNSET,
    Lease,
    ModelStatus,
    ReplicaStatus,
    Scheduler,
    Unset,
)
from modelyard.scheduler.state import ModelState

__all__ = [
    "UNSET",
    "CatalogChange",
    "Lease",
    "ModelState",
    "ModelStatus",
    "ReplicaStatus",
    "Scheduler",
    "Unset",
    "estimate",
]
