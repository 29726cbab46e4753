"""What a snapshot's stats say is missing from it: the agent's `run` and the controller's
views print the same notes."""

from __future__ import annotations

from node_agent.protocol import SnapshotStats


def stats_notes(stats: SnapshotStats, *, hints: bool = True) -> list[str]:
    """Events lost, drops, truncation; `hints`: name the agent's `run` flag to raise."""
    notes = []
    if stats.events_lost:
        notes.append(f"{stats.events_lost} events lost")
    if stats.map_full_drops:
        hint = " (raise --map-entries)" if hints else ""
        notes.append(f"{stats.map_full_drops} drops on full maps{hint}")
    if stats.rows_truncated:
        notes.append(
            "output truncated (raise --max-rows)" if hints else "output truncated at max_rows"
        )
    return notes
