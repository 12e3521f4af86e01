"""A user's plugins, outside dbl_ps, as `tests/test_extending.py` uses them: a package on
`sys.path` (here: tests/, where pytest puts it; for a user: their project or PYTHONPATH)."""
