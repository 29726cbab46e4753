"""bpftrace as an engine: a script checked against policy, scoped and instrumented for
snapshots (script.py), run under the trace's deadline (run.py), its maps read into the
protocol's result kinds (output.py)."""
