"""What every bench.analysis figure shares: one stable colour per method and a fresh
matplotlib figure (no pyplot state) when no axes are given."""

from __future__ import annotations


def method_colors(methods) -> dict[str, tuple]:
    """One stable colour per method (sorted names over matplotlib's tab10/tab20)."""
    from matplotlib import colormaps

    names = sorted(set(methods))
    cmap = colormaps["tab10" if len(names) <= 10 else "tab20"]
    return {name: cmap(i % cmap.N) for i, name in enumerate(names)}


def axes(ax, size=(6.4, 4.0)):
    """(figure, axes): ``ax``'s own, or a new figure's single axes."""
    if ax is not None:
        return ax.figure, ax
    from matplotlib.figure import Figure

    figure = Figure(figsize=size, layout="constrained")
    return figure, figure.add_subplot()
