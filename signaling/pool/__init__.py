"""The worker pool (shared/DESIGN.md section 6): headless workers and the signaling nodes that use them.

- :mod:`.protocol`: the worker RPC over HTTP (TCP or a unix socket) and its events WebSocket;
- :mod:`.registry`: where workers and calls are found (Redis, or in memory for ``--workers N``);
- :mod:`.remote`: :class:`~.remote.PoolDispatcher`, the signaling node's Dispatcher;
- :mod:`.worker_main`: ``v2v worker``; :mod:`.serve_main` and :mod:`.supervisor`: ``v2v serve --redis/--workers``.

Modules are imported lazily by the CLI; importing this package has no side effect.
"""
