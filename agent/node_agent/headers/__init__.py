"""Kernel headers for bcc, per host: which ones there are, and the kernel's own (kheaders)."""
