"""Argument types shared by the `dbl-ps` subcommands."""

from __future__ import annotations

import argparse
import sys


def command_error(command: str, message: str) -> int:
    """Print `dbl-ps COMMAND: error: MESSAGE` to stderr; returns exit status 2.
    Each command binds its name: `error = functools.partial(command_error, "train")`."""
    print(f"dbl-ps {command}: error: {message}", file=sys.stderr)
    return 2


def int_list(text: str) -> list[int]:
    """``"24,32"`` -> ``[24, 32]`` (an argparse ``type=``)."""
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers, e.g. 24,32") from None


def json_object(text: str) -> dict:
    """``'{"depth": 18}'`` -> ``{"depth": 18}`` (an argparse ``type=``)."""
    import json

    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{text!r} is not a JSON object such as '{{\"depth\": 18}}'")
    return value


def float_list(text: str) -> list[float]:
    """``"0.1,0.2"`` -> ``[0.1, 0.2]`` (an argparse ``type=``)."""
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None
