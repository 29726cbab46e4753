"""fleettrace node agent: runs catalog bcc programs on one host under time and size limits."""

__version__ = "0.1.0"
