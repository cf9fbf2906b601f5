"""Scale-out on Ray: one gateway, its catalog and scheduler, over several machines.

Ray does membership and puts a process on a chosen node; every decision stays modelyard's
(``scheduler.placement`` picks the node from its own per-node ledger). A node is a Ray node
with a keeper (``keeper.Keeper``, a Ray actor pinned to it) that starts and stops the same
runners as a single machine does, bound to the node's address; the gateway reaches them
directly over HTTP (``remote``), never through Ray. Ray is imported only here, and only in
cluster mode (``pip install 'modelyard[cluster]'``).
"""
