"""How a checkpoint file that cannot be opened is named in messages.

A folder copied with `cp -a` (or a Hugging Face cache folder moved away from its blobs) keeps its
relative symlinks, which then point nowhere: `ls` still lists the file, so "is missing" would
contradict what the user sees. Such a file is reported as a broken link with its target.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union


def describe_missing(path: Union[str, Path]) -> str:
    """'<path> is missing', or '<path> is a broken link -> <target> (...)' for a dangling symlink
    (the file itself or a linked folder on its way)."""
    return broken_link(path) or f"{Path(path)} is missing"


def broken_link(path: Union[str, Path]) -> Optional[str]:
    """The broken-link sentence when `path` (or a folder on its way) is a dangling symlink, else None."""
    path = Path(path)
    link = next((p for p in (path, *path.parents) if p.is_symlink() and not p.exists()), None)
    if link is None:
        return None
    target = os.readlink(link)
    resolved = (link.parent / target) if not os.path.isabs(target) else Path(target)
    where = "" if os.path.isabs(target) else f", i.e. {os.path.normpath(resolved)}"
    subject = f"{path} is a broken link" if link == path else f"{path} is under a broken link {link}"
    return (f"{subject} -> {target} (the target does not exist{where}); copy the folder with "
            "`cp -rL` (follows links) or fix the link")
