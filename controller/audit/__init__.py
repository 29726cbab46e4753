"""The audit log: one append-only record per mutating API call and per refusal on an agent."""
