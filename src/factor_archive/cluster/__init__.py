"""Archive on many machines: a Dask cluster stores the members, the client keeps every decision.

``open_cluster`` connects (``local:N`` or a scheduler address), ``run_tasks`` runs one task per
member and returns the manifest entries in plan order, ``worker`` holds the functions workers
run, ``tasks`` the small descriptions they get. ``docs/cluster.md`` explains the set-up.
"""

from .engine import open_cluster, run_tasks
from .tasks import MemberTask, StoreTarget

__all__ = ["MemberTask", "StoreTarget", "open_cluster", "run_tasks"]
