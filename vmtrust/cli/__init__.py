"""The vmtrust command line."""
