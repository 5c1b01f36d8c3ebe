"""Running a service's handlers for messages a broker delivers: the decisions (consumer.py, no broker in it), the
celery glue (celery_worker.py), and the per-message log line and counters (observability.py)."""
