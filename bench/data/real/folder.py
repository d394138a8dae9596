"""``folder``: any image folder laid out as ``root/<class>/<image>`` or
``root/<domain>/<class>/<image>``.

``layout`` picks the form (``auto``: from the depth of the images, which must be the same for
all). Cameras come from ``camera_pattern``, a regular expression searched in each file name whose
first group (or group ``camera``) is the camera; without one, camera = domain (each domain one
capture source). Hidden files and folders (``.name``) are skipped; symlinks are followed only
while they stay inside the root. Classes and domains are in natural sort order (``2 < 10``).
No roles: protocols split by classes.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any

from bench.data.real.common import RealDataset, Table, register_real
from bench.data.real.safety import IMAGE_SUFFIXES, inside
from bench.data.registry import Option
from bench.errors import BenchError

LAYOUTS = ("auto", "class", "domain/class")
#: how ``<domain>/<class>`` folders map to classes: ``shared`` = a class name is one class in
#: every domain (an identity seen by several cameras/styles); ``per_domain`` = each
#: ``<domain>/<class>`` is its own class (Omniglot's ``<alphabet>/<character>``); ``auto`` =
#: shared, with one line on stderr when names repeat across domains (never silently)
CLASS_MODES = ("auto", "shared", "per_domain")
SINGLE = "all"  # the domain/camera name when the layout has none


def parse_layout(value: Any) -> str:
    if value in LAYOUTS:
        return value
    raise ValueError(f"must be one of {', '.join(LAYOUTS)}, got {value!r}")


def parse_classes(value: Any) -> str:
    if value in CLASS_MODES:
        return value
    raise ValueError(f"must be one of {', '.join(CLASS_MODES)}, got {value!r}")


def parse_pattern(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError(f"must be a regular expression string, got {value!r}")
    try:
        compiled = re.compile(value)
    except re.error as error:
        raise ValueError(f"is not a valid regular expression ({error})") from None
    if compiled.groups < 1:
        raise ValueError("needs a group that captures the camera, e.g. '_c(\\d+)'")
    return value


def walk_images(root: Path) -> list[tuple[str, ...]]:
    """Relative path parts of every image under ``root``, sorted; symlinks must stay inside."""
    found: list[tuple[str, ...]] = []
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        here = Path(dirpath)
        real = os.path.realpath(here)
        if not inside(here, root):
            raise BenchError("folder resolves outside the dataset root (symlink?)",
                             source=str(here))
        if real in seen:  # a symlink loop or a second link to the same folder
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith(".") or Path(name).suffix.lower() not in IMAGE_SUFFIXES:
                continue
            path = here / name
            if not inside(path, root):
                raise BenchError("image resolves outside the dataset root (symlink?)",
                                 source=str(path))
            found.append(path.relative_to(root).parts)
    return sorted(found)


def index_folder(folder: Path, *, layout: str = "auto", camera_pattern: str | None = None,
                 classes: str = "auto") -> Table:
    images = walk_images(folder)
    if not images:
        raise BenchError("no images found (expected root/<class>/<image> or "
                         "root/<domain>/<class>/<image>)", source=str(folder))
    depths = {len(parts) for parts in images}
    if layout == "auto":
        if len(depths) > 1:
            examples = {len(p): "/".join(p) for p in images}
            shown = "; ".join(examples[d] for d in sorted(examples))
            raise BenchError(f"images at different depths ({shown}); use one layout or set "
                             "layout=class / layout=domain/class", source=str(folder))
        layout = {2: "class", 3: "domain/class"}.get(depths.pop(), "")
        if not layout:
            raise BenchError("images must sit in root/<class>/ or root/<domain>/<class>/ "
                             f"(found e.g. {'/'.join(images[0])})", source=str(folder))
    want = 2 if layout == "class" else 3
    pattern = re.compile(camera_pattern) if camera_pattern else None
    table = Table(roles=None)
    for parts in images:
        relative = "/".join(parts)
        if len(parts) != want:
            raise BenchError(f"expected {layout}/<image> here (depth {want})",
                             source=str(folder / relative))
        domain = parts[0] if want == 3 else SINGLE
        cls = parts[-2]
        camera = domain
        if pattern is not None:
            match = pattern.search(parts[-1])
            if match is None:
                raise BenchError(f"camera_pattern {camera_pattern!r} does not match the file "
                                 "name", source=str(folder / relative))
            camera = match.groupdict().get("camera") or match.group(1)
        if classes == "per_domain" and want == 3:
            cls = f"{domain}/{cls}"  # Omniglot-like: the same name in two domains, two classes
        table.add(relative, cls, domain, camera, None)
    table.meta["layout"] = layout
    table.meta["classes"] = _note_shared_classes(folder, images, classes) if want == 3 \
        else "shared"
    return table


def _note_shared_classes(folder: Path, images: list[tuple[str, ...]], classes: str) -> str:
    """``classes`` as applied; under ``auto``, one line when class names repeat across domains
    (they are merged: say so, and how to keep them apart)."""
    if classes != "auto":
        return classes
    domains_of: dict[str, set[str]] = {}
    for parts in images:
        domains_of.setdefault(parts[-2], set()).add(parts[0])
    repeated = sorted(name for name, found in domains_of.items() if len(found) > 1)
    if repeated:
        folders = sum(len(found) for found in domains_of.values())
        print(f"bench: {folder}: {len(repeated)} class name(s) appear in several domains (e.g. "
              f"{repeated[0]!r}) and are merged: {len(domains_of)} classes from {folders} "
              f"<domain>/<class> folders; set the option classes=per_domain to keep each "
              f"<domain>/<class> apart, or classes=shared to silence this", file=sys.stderr)
    return "shared"


FOLDER = register_real(RealDataset(
    name="folder",
    description="your own images: root/<class>/<image> or root/<domain>/<class>/<image>",
    markers=(),
    hint="put images in <class>/ or <domain>/<class>/ folders there",
    index=index_folder,
    extra_options={
        "layout": Option("auto", parse_layout, "auto, class or domain/class"),
        "classes": Option("auto", parse_classes, "auto, shared or per_domain (domain/class "
                          "layout: is a class name one class across domains?)"),
        "camera_pattern": Option(None, parse_pattern,
                                 "regex on the file name; group 1 is the camera"),
    },
))
