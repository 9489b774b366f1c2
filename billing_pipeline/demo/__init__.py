"""The demo: a catalog and a realistic month of usage, and the command that runs it all."""
