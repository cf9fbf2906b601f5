"""Which models are loaded, who waits, who is evicted."""

from modelyard.catalog.catalog import CatalogChange
from modelyard.scheduler.budget import estimate
from modelyard.scheduler.model import UNSET, Lease, Listed, ModelStatus, ReplicaStatus, Unset
from modelyard.scheduler.scheduler import Scheduler
from modelyard.scheduler.state import ModelState

__all__ = [
    "UNSET",
    "CatalogChange",
    "Lease",
    "Listed",
    "ModelState",
    "ModelStatus",
    "ReplicaStatus",
    "Scheduler",
    "Unset",
    "estimate",
]
