"""The ``kbridge`` command line (Typer): parses flags, builds configs, calls the engine, formats."""
