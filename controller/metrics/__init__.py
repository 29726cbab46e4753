"""fleettrace's own metrics for Prometheus: `GET /metrics` and the optional open port.

Fleet-wide families are read at scrape time from the database and Redis (the same on every
controller); event counts and latencies made in other processes (ingest, the scheduler) travel
through Redis (`tally`); the API's own latencies, pool and live streams are this process's.
"""
