"""fleettrace controller: API, storage, dispatch, ingest, schedules, reports."""
