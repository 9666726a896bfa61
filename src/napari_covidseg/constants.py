"""Class ids, names, colours and intensity windows: the one place they are defined.

Everything else imports these; nothing retypes them.
"""

from __future__ import annotations

# Lesion classes of the segmentation models (label value -> name). 0 is background.
BACKGROUND = 0
GGO = 1
CONSOLIDATION = 2
EFFUSION = 3

LESION_CLASSES: dict[int, str] = {
    BACKGROUND: "background",
    GGO: "ground-glass opacity",
    CONSOLIDATION: "consolidation",
    EFFUSION: "pleural effusion",
}

# RGBA in 0..1, fixed per class so every layer, screenshot and report agrees.
LESION_COLOURS: dict[int, tuple[float, float, float, float]] = {
    BACKGROUND: (0.0, 0.0, 0.0, 0.0),
    GGO: (1.0, 0.85, 0.0, 1.0),  # yellow
    CONSOLIDATION: (0.9, 0.1, 0.1, 1.0),  # red
    EFFUSION: (0.15, 0.45, 1.0, 1.0),  # blue
}

# Lung masks (classical HU mask, quantification, lung-first segmentation): value -> name, and their outline colours.
LUNG_NAMES: dict[int, str] = {0: "outside the lungs", 1: "right lung", 2: "left lung"}
LUNG_COLOURS: dict[int | None, tuple[float, float, float, float]] = {
    None: (0.0, 0.0, 0.0, 0.0),
    0: (0.0, 0.0, 0.0, 0.0),
    1: (0.0, 0.8, 0.8, 1.0),  # teal
    2: (0.6, 0.4, 1.0, 1.0),  # violet
}

# Whole-volume diagnosis classes of the 3D classifier, in output order.
DIAGNOSIS_CLASSES: tuple[str, ...] = ("COVID-19", "common pneumonia", "normal")
# RGBA in 0..1 per diagnosis class, same order (red, orange, green).
DIAGNOSIS_COLOURS: tuple[tuple[float, float, float, float], ...] = (
    (0.9, 0.1, 0.1, 1.0),
    (1.0, 0.6, 0.0, 1.0),
    (0.2, 0.7, 0.3, 1.0),
)

# How a class-activation map is shown (0..1, relative to its strongest point): transparent below CAM_THRESHOLD, then
# purple -> magenta -> pale pink with rising opacity: no lesion colour (yellow, red, blue) is reused, and the CT and
# the lesion labels stay readable under it.
CAM_THRESHOLD = 0.4
CAM_COLOUR_STOPS: tuple[tuple[float, tuple[float, float, float, float]], ...] = (
    (0.0, (0.35, 0.1, 0.6, 0.0)),
    (CAM_THRESHOLD, (0.35, 0.1, 0.6, 0.0)),
    (CAM_THRESHOLD + 0.001, (0.35, 0.1, 0.6, 0.3)),
    (0.7, (0.85, 0.2, 0.75, 0.55)),
    (1.0, (1.0, 0.8, 0.95, 0.8)),
)

# Hounsfield units of the phantom tissues and of the usual windows.
HU_AIR = -1000.0
HU_LUNG = -850.0
LUNG_WINDOW: tuple[float, float] = (-1350.0, 150.0)  # centre -600, width 1500
# The HU window that reproduces the 8-bit MedSeg training slices (found by histogram landmarks, docs/INTENSITY.md):
# models trained on MedSeg see HU through this window, so a HU scan looks like their training data.
MEDSEG_HU_WINDOW: tuple[float, float] = (-1130.0, 280.0)
BODY_THRESHOLD_HU = -500.0  # voxels above this are body (or table) when cropping

#: Slices per forward pass when segmenting. On CPU 4 beat 8 and 16 in the settings sweeps (docs/BENCHMARKS.md:
#: 1.06-1.08x and 1.2-1.6x its time) and 2 was within noise of it (0.91-0.99x, its own runs spreading more). A batch
#: of 8 192x192 slices makes 38 MB activations, above glibc's largest mmap threshold (32 MB), so each is a fresh
#: mapping whose pages the kernel faults in and zeroes on every forward (in a forward loop a third of the time was
#: system time); at 4 they are reused heap memory. It also bounds memory: only this many slices are in flight.
DEFAULT_BATCH_SIZE = 4
