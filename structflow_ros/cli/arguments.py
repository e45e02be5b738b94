"""Argument types shared by the commands: one spelling and one order for sizes.

A size on the command line is WIDTHxHEIGHT (as cameras and video tools write it); in the code it
is (height, width), as arrays are indexed. `parse_size` does that one conversion for every
command.
"""
import argparse


def parse_size(text, minimum=8):
    """'320x96' -> (96, 320) as (height, width); each side at least `minimum` pixels."""
    try:
        width, height = (int(part) for part in text.lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f'--size must be WIDTHxHEIGHT such as 320x96 or 640x192, got {text!r}') from None
    if width < minimum or height < minimum:
        raise argparse.ArgumentTypeError(
            f'--size must be at least {minimum}x{minimum}, got {text!r}')
    return height, width


def size_at_least(minimum):
    """An argparse type: parse_size with this minimum."""
    return lambda text: parse_size(text, minimum)
