"""Class names as folder names: one rule for every place a class name becomes, or is checked as, a folder.

Class names are also printed (predict.py, val.py); printing escapes them (errors.shown), so a name never
writes a line of its own or a terminal escape.
"""
import os


def is_folder_name(name):
    """Whether `name` can be one folder's name on any file system: not empty or hidden, no `/`, printable (no
    control character), at most 255 bytes."""
    return (bool(name) and not name.startswith(".") and "/" not in name and os.sep not in name
            and name.isprintable() and len(name.encode("utf-8", "replace")) <= 255)
