"""Synthetic bright-field ETEM frames of supported Au nanoparticles with exact ground truth.

The generator imitates the frames of Horwath et al. (2020): 1792 x 1920 px at about 0.18 nm/px,
Au particles about 5 nm across on an amorphous SiN membrane, about 15 % particle pixels, recorded
at 400 frames/s so that shot noise dominates. Every part of the image formation is a switch in
:class:`SyntheticConfig` and every random draw comes from a seeded stream, so a frame is a pure
function of ``(config, seed)`` (and, for sequences, of the sequence arguments).

Model, in the order it is applied
---------------------------------
1. Population. Volume-equivalent diameters are log-normal (median ``median_diameter_nm``) with a
   tail of 1-2 nm particles and a few large, coarsened or coalesced particles built from 1-3
   elliptical lobes. Positions come from rejection sampling with a gap of ``min_gap_nm`` between
   bounding circles, so distinct particles never overlap or touch at frame 0.
2. Projected thickness. Each lobe is an ellipsoid (a sphere for ordinary particles):
   ``t = 2 c sqrt(1 - q)`` with ``q`` the normalised elliptical radius; a multi-lobe particle takes
   the maximum over its lobes (exact for lobes centred at the same height).
3. Contrast. Darkening ``D = 1 - exp(-k t / lambda)``; ``k`` is a per-particle orientation factor
   (near 1, or 2-3.5 for the ``bragg_fraction`` of particles close to a Bragg orientation).
4. Optics. Gaussian point spread; an underfocus Fresnel fringe as a difference of two blurs of
   ``D`` (bright just outside the rim, slightly dark just inside).
5. Support. Multiplicative amorphous speckle (band-pass noise peaked near ``speckle_scale_nm``)
   plus a slow thickness variation; it moves with the sample when the stage drifts.
6. Camera. Slow uneven illumination, faint fixed-pattern row/column gain, Poisson shot noise at
   ``dose_e_per_px`` electrons per pixel. The image is in electrons per pixel.

Optional effects (``EFFECT_FIELDS``; all off by default, and the default output is bit-identical
to the generator without them; the physics lives in :mod:`.effects`):

- support: ``vacuum_fraction`` of holes in a ``film_thickness_nm`` film (particles over a hole are
  not made) and ``aggregate_fraction`` of thick, irregular aggregates, mass thickness
  ``exp(-t / support_mean_free_path_nm)`` relative to the film, amorphous texture ~ sqrt(t);
- ``detector_blur_px`` (+ ``detector_tail_fraction``): a point spread over the whole image;
- ``noise_mode="linear"``: integrating readout, charge spreading ``linear_spread_px`` (correlated
  noise) and Gaussian ``read_noise_e``;
- ``defocus_nm`` (+ underfocus): Fresnel propagation of the particles' (and aggregates') phase
  sigma V0 t, fringes whose sign follows the defocus;
- ``lattice_amplitude``: lattice fringes of ``lattice_spacing_nm`` and moire beats of two
  overlapping lattices (``moire_fraction``) inside particles, drawn above 2 px per period only;
- ``imaging_mode="haadf"``: incoherent Z-contrast, signal ~ t Z^``haadf_z_exponent``, bright
  particles on a dim support and dark vacuum;
- ``jpeg_quality`` > 0: a JPEG round trip of the output;
- ``vary_effects``: :func:`experiment_configs` redraws the effects' strengths per experiment.

Ground truth
------------
``mask`` is the geometric projection (pixel centre inside at least one lobe ellipse), ``labels``
holds the particle id (int32, 0 background) and ids persist across the frames of a sequence. Two
distinct particles never share pixels at frame 0; in sequences particles whose volume-equivalent
spheres come to touch coalesce into ONE particle (the larger one's id) that rounds off over
``coalescence_relax_s``. If coalescence is switched off and two particles grow into each other,
the larger one keeps the shared pixels. The per-frame table is measured from the rendered labels,
so it agrees with the mask to the pixel; ``radius_nm`` keeps the model's volume-equivalent radius.

Table columns: ``id`` (persistent, equals the label value), ``y_px``/``x_px`` (centroid of the
visible mask pixels, pixel-index coordinates), ``area_px``, ``diameter_px``/``diameter_nm``
(equivalent diameter of the visible mask), ``radius_nm`` (volume-equivalent radius of the whole
particle), ``contrast`` (peak fractional darkening 1 - exp(-k t_max / lambda) before blur and
noise), ``mean_contrast`` (mean darkening inside the mask after the point spread),
``orientation_factor`` (k), ``n_lobes`` (1 for round or elongated particles, 2+ for coalesced
ones), ``touches_border`` (mask reaches the first or last row or column).
"""

from __future__ import annotations

# the private names are re-exported for tests and callers of the former single module
from .api import (  # noqa: F401
    _check_seed,
    experiment_configs,
    generate_frame,
    generate_sequence,
    heldout_config,
    iter_sequence,
    true_coarsening_curves,
)
from .config import EFFECT_FIELDS, TABLE_COLUMNS, Frame, SyntheticConfig
from .dynamics import _advance, _coalesce  # noqa: F401
from .population import _Population, _sample_population  # noqa: F401
from .render import _render  # noqa: F401

__all__ = [
    "EFFECT_FIELDS",
    "TABLE_COLUMNS",
    "Frame",
    "SyntheticConfig",
    "experiment_configs",
    "generate_frame",
    "generate_sequence",
    "heldout_config",
    "iter_sequence",
    "true_coarsening_curves",
]
