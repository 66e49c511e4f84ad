"""Plots for the notebooks: samples, densities, trajectories, vector fields,
an animation that works in the static book, and the source of a package function.

Importing this module sets the workbook's figure style (``PAGE_STYLE``): the book's text column
shows figures 690-960 px wide and the widest figures are 12-13 inches, so text is sized for the
page, and every size in the notebooks is relative ("small", "medium") to it.
"""

from __future__ import annotations

import inspect
import re

import matplotlib.pyplot as plt
import numpy as np
import torch

# Font sizes in points. On the page a font is pt / 72 * (shown width / figure inches) px, whatever
# the dpi. The book shows a figure at most 688 px wide in a 1280 px window (816 at 1440, 960 at
# 1920); the widest (13 inches, 12.8 after the tight crop) thus at 688 / 12.8 = 54 px per inch:
# a title (14 pt) is 10.4 px there and ticks and legends (12 and 11.7 pt) 8.7-8.9 px; at 1440 px
# 12.4 and 10.6 px, and larger on the narrower figures.
PAGE_STYLE = {"font.size": 14, "axes.titlesize": "medium", "axes.labelsize": "medium",
              "xtick.labelsize": 12, "ytick.labelsize": 12, "legend.fontsize": "small",
              "figure.titlesize": "large", "figure.dpi": 100}
plt.rcParams.update(PAGE_STYLE)


def _np(x):
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def scatter(ax, x, title: str = "", s: float = 1.0, color: str = "C0", lim: float | None = 6.0,
            alpha: float = 0.5):
    """Scatter plot of 2D samples (n, 2) on a square, equal-aspect axis."""
    x = _np(x)
    ax.scatter(x[:, 0], x[:, 1], s=s, c=color, alpha=alpha, linewidths=0)
    _square(ax, lim)
    ax.set_title(title, fontsize="medium")
    return ax


def density(ax, x, bins: int = 100, lim: float = 6.0, title: str = ""):
    """2D histogram of samples as an image."""
    x = _np(x)
    ax.hist2d(x[:, 0], x[:, 1], bins=bins, range=[[-lim, lim], [-lim, lim]], cmap="viridis")
    _square(ax, lim)
    ax.set_title(title, fontsize="medium")
    return ax


def log_density_image(ax, log_p_fn, lim: float = 4.5, n: int = 100, title: str = "", vmin=None):
    """Image of exp(log p(x)) on an n x n grid; log_p_fn maps (N, 2) -> (N,)."""
    g = torch.linspace(-lim, lim, n)
    xx, yy = torch.meshgrid(g, g, indexing="xy")
    pts = torch.stack([xx.flatten(), yy.flatten()], 1)
    dens = torch.exp(log_p_fn(pts)).reshape(n, n)
    ax.imshow(_np(dens), extent=[-lim, lim, -lim, lim], origin="lower", cmap="viridis",
              vmin=vmin)
    ax.set_title(title, fontsize="medium")
    ax.set_xticks([]), ax.set_yticks([])
    return ax


def trajectories(ax, traj, n: int = 200, lim: float | None = 6.0, title: str = ""):
    """Lines of ODE trajectories traj (K+1, B, 2): start black, end blue."""
    tr = _np(traj)[:, :n]
    ax.plot(tr[:, :, 0], tr[:, :, 1], color="olive", alpha=0.3, lw=0.6)
    ax.scatter(tr[0, :, 0], tr[0, :, 1], s=3, c="black", zorder=3)
    ax.scatter(tr[-1, :, 0], tr[-1, :, 1], s=3, c="C0", zorder=3)
    _square(ax, lim)
    ax.set_title(title, fontsize="medium")
    return ax


@torch.no_grad()
def vector_field(ax, v, t: float, lim: float = 6.0, n: int = 20, title: str = ""):
    """Quiver plot of v(x, t) on an n x n grid."""
    g = torch.linspace(-lim, lim, n)
    xx, yy = torch.meshgrid(g, g, indexing="xy")
    pts = torch.stack([xx.flatten(), yy.flatten()], 1)
    vel = _np(v(pts, torch.full((len(pts),), float(t))))
    speed = np.linalg.norm(vel, axis=1)
    ax.quiver(_np(pts[:, 0]), _np(pts[:, 1]), vel[:, 0], vel[:, 1], speed, cmap="coolwarm",
              angles="xy", scale_units="xy", scale=4.0, width=0.004)
    _square(ax, lim)
    ax.set_title(title, fontsize="medium")
    return ax


def time_slices(traj, times, k: int = 6, lim: float = 6.0, title: str = ""):
    """A row of k scatter plots of traj (K+1, B, 2) at evenly spaced times: the static
    stand-in for an animation or a slider."""
    idx = np.linspace(0, len(traj) - 1, k).round().astype(int)
    fig, axes = plt.subplots(1, k, figsize=(2.2 * k, 2.3))
    for ax, i in zip(axes, idx):
        scatter(ax, traj[i], title=f"t = {float(times[i]):.2f}", lim=lim)
    if title:
        fig.suptitle(title, fontsize="large")
    fig.tight_layout()
    return fig


def animation_html(traj, times, lim: float = 6.0, frames: int = 21, interval: int = 120) -> str:
    """A self-contained jshtml animation of the samples moving along traj (K+1, B, 2).

    The HTML embeds its frames and player script, so it plays in the static
    book with no network (unlike ipywidgets, whose JavaScript needs a CDN).
    """
    from matplotlib import animation

    tr = _np(traj)
    idx = np.linspace(0, len(tr) - 1, frames).round().astype(int)
    fig, ax = plt.subplots(figsize=(3.6, 3.6))
    pts = ax.scatter(tr[0, :, 0], tr[0, :, 1], s=1.5, alpha=0.6, linewidths=0)
    _square(ax, lim)
    label = ax.set_title("")

    def draw(i):
        pts.set_offsets(tr[idx[i]])
        label.set_text(f"t = {float(times[idx[i]]):.2f}")
        return pts, label

    anim = animation.FuncAnimation(fig, draw, frames=len(idx), interval=interval)
    out = anim.to_jshtml(default_mode="once")
    plt.close(fig)
    return offline_player(out)


# matplotlib's jshtml player draws its buttons with Font Awesome from a CDN; text symbols instead.
# Only bars and Geometric Shapes triangles/rectangles (U+25AE, U+25B6, U+25C0), which common fonts
# (DejaVu, Liberation's fallbacks, system UI fonts) all have: the media symbols of U+23E9-23FA
# (⏮ ⏸ ...) are missing from many and showed as empty boxes. U+FE0E keeps ◀ ▶ text, not emoji.
_L, _R = "&#x25C0;&#xFE0E;", "&#x25B6;&#xFE0E;"
_PLAYER_ICONS = {"fa-minus": "&minus;", "fa-fast-backward": f"|{_L}{_L}", "fa-step-backward": f"|{_L}",
                 "fa-play fa-flip-horizontal": _L, "fa-pause": "&#x25AE;&#x25AE;",
                 "fa-play": _R, "fa-step-forward": f"{_R}|",
                 "fa-fast-forward": f"{_R}{_R}|", "fa-plus": "+"}


def offline_player(html: str) -> str:
    """The jshtml player with no network reference: the Font Awesome stylesheet link removed and
    each icon replaced by a text symbol, so the buttons show offline (site, Lab, file://)."""
    html = re.sub(r"<link[^>]*font-awesome[^>]*>", "", html, flags=re.S)
    for cls, symbol in _PLAYER_ICONS.items():
        html = html.replace(f'<i class="fa {cls}"></i>', symbol)
    return html


def show_source(obj):
    """Show the source of a package function or class in a notebook, syntax-highlighted."""
    from IPython.display import Code

    return Code(inspect.getsource(obj), language="python")


def _square(ax, lim):
    if lim is not None:
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_xticks([]), ax.set_yticks([])
