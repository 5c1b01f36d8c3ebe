"""`shop bench`: the full system measured side by side with a bare celery pipeline of the same shape.

The point is a ratio, not an absolute number: both pipelines run on the same Redis, with the same number of worker
processes, started the same way, in alternating runs, so the noise of a shared machine hits both alike.
"""
