"""The live console: a page served by `shop up`, `shop demo` and `shop monolith` (http://127.0.0.1:5000) showing the
events as they flow, the services' queues and workers, an order's journey, the notifications and the dead letters, with
a few admin actions (sample orders, stopping and starting a service's workers, replaying or purging a dead letter).

`app.py` is the HTTP side (FastAPI, server-sent events, the static page in `static/`); `views.py` reads what the page
shows through the same code as `shop status`, `shop metrics`, `shop trace` and `shop dlq`; `samples.py` places sample
orders through the order API, as a client would.
"""
