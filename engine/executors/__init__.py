"""How rows move through the stage graph (engine/stages), one module per executor.

- ``local``: the streaming executor (``stream``) and the run driver over the fused or phased
  schedule (``execute``); ``kbridge serve`` runs ``stream`` long-lived.
- ``phased``: the rows persisted between the phases of the phased schedule.
- ``ray`` (``--executor ray``) with ``ray_plan``: the same stages as Ray Data operators.
- ``sink``: the run directory's one writer, shared by every executor.

``engine.api.EXECUTORS`` names the executors a run can pick; each is imported when chosen.
"""
