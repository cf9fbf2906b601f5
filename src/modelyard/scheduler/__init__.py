"""Which models are loaded, who waits, who is evicted."""

from modelyard.scheduler.scheduler import Lease, ModelStatus, Scheduler
from modelyard.scheduler.state import ModelState

__all__ = ["Lease", "ModelState", "ModelStatus", "Scheduler"]
