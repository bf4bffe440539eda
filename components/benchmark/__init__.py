"""``neuralmark benchmark``: every content method and the pip-installable peers through the
same attacks on the same photos, and the model methods through the model attacks, in one
tidy table.

One role per module:

- ``sweeps``: the strength sweep of every attack, as data (the attack registry builds them);
- ``peers``: dwtDct, dwtDctSvd, rivaGan (invisible-watermark) and blind-watermark behind our
  content interface, with our keyed 32-bit payload;
- ``entrants``: registered methods (shipped bundles) and peers, or why one cannot run;
- ``images``: a folder or the held-out split as one batch; bad files become rows;
- ``timing``: ms per image against batch size and resolution, peak memory;
- ``forgery``: the copy attack and the black-box removal attack;
- ``estimation_forgery``: forgeries from several marked photos (residual copy, feature
  mean shift) that a keyed verifier must survive;
- ``forgery_targets``: hundreds of clean target photos for the forgeries (photo crops and
  procedural images), so a forgery rate can be bounded near 1 %;
- ``surrogate_forgery``: the surrogate-learning attack on a keyed decoder (forgery and
  removal through a decoder learnt from marked photos);
- ``l2_pgd``: the forgers' optimiser (batched L2 PGD within a PSNR budget);
- ``whitebox``: the white-box removal, APGD against the public decoder / scanner (or
  the shipped remover: visible_gan's V);
- ``models``: the model methods' shipped hosts through the model attacks (their own table);
- ``runner``: ``BenchmarkSettings`` and ``run_benchmark`` → the tidy table;
- ``report``: CSV, Markdown and a self-contained HTML report with one plot per attack;
- ``cards``: a model card's benchmark section, written from the table.
"""

from neuralmark.components.benchmark.images import PhotoSet, load_folder, load_heldout
from neuralmark.components.benchmark.runner import (
    COLUMNS,
    BenchmarkResult,
    BenchmarkSettings,
    run_benchmark,
)

__all__ = ["COLUMNS", "BenchmarkResult", "BenchmarkSettings", "PhotoSet", "load_folder",
           "load_heldout", "run_benchmark"]
