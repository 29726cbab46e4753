"""The controller's signing keys: created once, rotated without downtime, retired by hand."""
