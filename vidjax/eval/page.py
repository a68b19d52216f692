"""An HTML page of an evaluation: the figures, then each item's video beside its scores."""

from __future__ import annotations

import html
import os
from typing import Mapping, Sequence

from vidjax.errors import atomic_path
from vidjax.eval.metrics import Figure


def write_page(path: str | os.PathLike, title: str, figures: Sequence[Figure],
               items: Sequence[tuple[str, str, Mapping[str, float]]]) -> None:
  """Writes `path` atomically.

  items: (key, video path relative to the page, {score name: value}) per item; the score names of
  the first item are the table's columns.
  """
  columns = list(items[0][2]) if items else []
  figure_rows = "".join(f"<tr><td>{html.escape(f.metric)}</td><td>{f.value:.4f}</td><td>{f.count}</td>"
                        f"<td>{html.escape(f.protocol)}</td></tr>" for f in figures)
  item_rows = "".join(
      f"<tr><td>{html.escape(key)}</td><td><img src=\"{html.escape(video)}\" alt=\"{html.escape(key)}\"></td>"
      + "".join(f"<td>{scores.get(c, float('nan')):.4f}</td>" for c in columns) + "</tr>"
      for key, video, scores in items)
  header = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
  text = (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title></head><body>\n"
          f"<h1>{html.escape(title)}</h1>\n<table border=\"1\"><tr><th>metric</th><th>value</th><th>items</th>"
          f"<th>protocol</th></tr>{figure_rows}</table>\n<h2>Items</h2>\n"
          f"<table border=\"1\"><tr><th>item</th><th>video</th>{header}</tr>{item_rows}</table>\n</body></html>\n")
  with atomic_path(path) as tmp, open(tmp, "w") as f:
    f.write(text)
