"""The web console: server-rendered pages at `/`, signed in with an API token."""
