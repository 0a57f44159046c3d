"""The ``spatialdreamer`` command."""
