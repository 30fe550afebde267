"""Gestures a user makes in the browser tests (Playwright)."""

from __future__ import annotations

# a closed polygon over the middle of a plot, as fractions of its drawing area
MIDDLE = ((0.2, 0.2), (0.8, 0.2), (0.8, 0.8), (0.2, 0.8), (0.2, 0.21))


def lasso(page, target, corners=MIDDLE) -> None:
    """Draw a lasso with the mouse over `target` (a locator, in the page or in a frame)."""
    box = target.first.bounding_box()
    x0, y0, w, h = box["x"], box["y"], box["width"], box["height"]
    page.mouse.move(x0 + w * corners[0][0], y0 + h * corners[0][1])
    page.mouse.down()
    for fx, fy in corners[1:]:
        page.mouse.move(x0 + w * fx, y0 + h * fy, steps=8)
    page.mouse.up()
