"""The store's cross-process smoke test from a checkout (the release workflow runs it on
every platform's wheel); it lives in the package as `python -m dbl_ps.smoke`, so a wheel
user runs it without a checkout."""

from dbl_ps.smoke import main

if __name__ == "__main__":
    main()
