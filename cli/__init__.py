"""The ``detloop`` command line (Typer): the top layer, over ``flows/``, ``tasks/`` and the core ``detloop/``."""
