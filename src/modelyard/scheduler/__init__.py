"""Which models are loaded, who waits, who is evicted."""

from modelyard.scheduler.scheduler import CatalogChange, Lease, ModelStatus, Scheduler, estimate
from modelyard.scheduler.state import ModelState

__all__ = ["CatalogChange", "Lease", "ModelState", "ModelStatus", "Scheduler", "estimate"]
