"""Examples that ship with the package: `python -m tessera.examples.tk_viewer` (or `tessera viewer`)."""
