"""The layers of docs/architecture.md, kept: each module imports only its own layer and
the layers below it. The probes and the backend know nothing of the control plane."""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: Low to high. A module may import its own layer and any layer before it.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("control_plane.names", "control_plane.config"),
    ("control_plane.ir",),
    ("control_plane.xds.resource",),
    ("control_plane.xds.cache",),
    ("control_plane.xds.translator", "control_plane.xds.bootstrap"),
    ("control_plane.xds.server",),
    ("control_plane.reconcile",),
    ("control_plane.observe",),
    ("control_plane.admin",),
    ("control_plane.runtime",),
    ("control_plane.cli", "control_plane.__main__"),
)
#: Packages outside the control plane, and the control-plane modules each may use.
OUTSIDE = {
    "health": (),
    "whisper_backend": (),
    "long_audio": ("control_plane.config",),  # it reads the gateway's own config file
    "gateway_supervisor": (
        "control_plane.admin.exposure",
        "control_plane.cli",
        "control_plane.config",
        "control_plane.xds.bootstrap",
    ),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> Iterator[str]:
    """Every module `path` imports, at the top or inside a function."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            # `from control_plane.xds.server import ads` imports a module too.
            yield from (f"{node.module}.{a.name}" for a in node.names)


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def layer_of(name: str) -> int | None:
    for i, layer in enumerate(LAYERS):
        if any(_within(name, p) for p in layer):
            return i
    return None


#: Packages that only hold layers (their __init__ is a docstring).
CONTAINERS = frozenset({"control_plane", "control_plane.xds"})


def violations(edges: Iterable[tuple[str, str]]) -> list[str]:
    """(importer, imported) pairs that go against the layers."""
    out = []
    for src, dst in edges:
        if not _within(dst, "control_plane") or dst in CONTAINERS:
            continue
        if _within(src, "control_plane"):
            low, high = layer_of(dst), layer_of(src)
            if low is None or high is None:
                out.append(f"{src} imports {dst}: one of them is in no layer")
            elif low > high:
                out.append(f"{src} (layer {high}) imports {dst} (layer {low})")
        elif not any(_within(dst, a) for a in OUTSIDE.get(src.split(".")[0], ())):
            out.append(f"{src} imports {dst}")
    return out


def tree_edges() -> list[tuple[str, str]]:
    edges = []
    for package in ("control_plane", *OUTSIDE):
        for path in (ROOT / package).rglob("*.py"):
            src = module_name(path)
            edges += [(src, dst) for dst in imports(path)]
    return edges


def test_every_control_plane_module_is_in_a_layer() -> None:
    names = {module_name(p) for p in (ROOT / "control_plane").rglob("*.py")}
    assert sorted(n for n in names - CONTAINERS if layer_of(n) is None) == []


def test_no_module_imports_a_layer_above_it() -> None:
    assert violations(tree_edges()) == []


def test_the_check_catches_an_upward_import() -> None:
    """The rule itself: a translator reaching for the reconciler, the IR for the admin API,
    or the probes for the control plane are each reported."""
    bad = [
        ("control_plane.xds.translator.routes", "control_plane.reconcile.reconciler"),
        ("control_plane.ir.fleet", "control_plane.admin.api"),
        ("control_plane.observe.prometheus", "control_plane.runtime"),
        ("health.monitor", "control_plane.ir.model"),
        ("gateway_supervisor.stack", "control_plane.runtime"),
        ("long_audio.server", "control_plane.ir.model"),
    ]
    assert len(violations(bad)) == len(bad)
    fine = [
        ("control_plane.runtime", "control_plane.xds.server.ads"),
        ("control_plane.admin.api", "control_plane.observe.read_model"),
        ("control_plane.reconcile.probes", "health"),
        ("gateway_supervisor.stack", "control_plane.cli.tools"),
        ("long_audio.__main__", "control_plane.config.parse"),
    ]
    assert violations(fine) == []
