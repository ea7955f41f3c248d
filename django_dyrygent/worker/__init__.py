"""The worker side: what runs inside a Celery worker beside the tasks.

``handlers`` turns Celery's task signals into engine reports, ``heartbeat``
is the main process's liveness thread (beat and sweep), ``liveness`` judges
whether a node's worker is alive, and ``recovery`` re-runs what dead workers
and lost messages left. Imports the engine and the models; the engine never
imports this package.
"""
