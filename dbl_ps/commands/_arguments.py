"""Argument types shared by the `dbl-ps` subcommands."""

from __future__ import annotations

import argparse


def int_list(text: str) -> list[int]:
    """``"24,32"`` -> ``[24, 32]`` (an argparse ``type=``)."""
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers, e.g. 24,32") from None


def float_list(text: str) -> list[float]:
    """``"0.1,0.2"`` -> ``[0.1, 0.2]`` (an argparse ``type=``)."""
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None
