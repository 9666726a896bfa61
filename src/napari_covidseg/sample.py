"""A synthetic chest-CT phantom with known lesion labels, for demos, tests and benchmarks.

Everything is in Hounsfield units (HU) and millimetres (mm). Arrays use the display axis order
(z, y, x): z runs inferior (0) -> superior, y anterior (row 0, top) -> posterior (bottom) and
x patient right (column 0) -> patient left, so the patient's right lung is on the image left.

The geometry is defined in normalised coordinates (each axis mapped to -1..1) and therefore scales
with the requested shape; the spacing is only metadata (and goes into the NIfTI affine).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from napari_covidseg.constants import CONSOLIDATION, EFFUSION, GGO, HU_AIR, HU_LUNG

# Tissue values (HU) of the phantom besides air and lung (those come from constants).
HU_SOFT = 40.0
HU_FAT = -100.0
HU_MEDIASTINAL_FAT = -90.0
HU_RIB = 700.0
HU_VERTEBRA_CORTEX = 950.0
HU_VERTEBRA_CANCELLOUS = 420.0
NOISE_SD_HU = 12.0  # Gaussian noise inside the body ...
NOISE_CLIP_HU = 36.0  # ... truncated at 3 SD, so lesion values stay within range +- this
# Intensity range (HU) of each lesion class before noise; the painted values lie inside these.
LESION_HU_RANGES: dict[int, tuple[float, float]] = {
    GGO: (-700.0, -300.0),
    CONSOLIDATION: (-100.0, 50.0),
    EFFUSION: (0.0, 30.0),
}
LESION_TOP_W = 0.72  # no lesion above this fraction of the z extent: the apex slices are lesion-free
RIGHT_LUNG, LEFT_LUNG = 1, 2  # values of the lung mask

# Body outline (semi-axes in normalised x, y) and elliptic radii of its layers.
_BODY_AX, _BODY_AY = 0.88, 0.66
_R_SKIN, _R_FAT, _R_RIB_OUT, _R_RIB_IN, _R_WALL = 0.97, 0.90, 0.875, 0.825, 0.80


@dataclass
class Phantom:
    """A synthetic scan, all arrays (z, y, x).

    ct: float32 HU. lesions: uint8, 0 background, GGO, CONSOLIDATION, EFFUSION (constants).
    lungs: uint8, 0 outside, 1 right lung (image left), 2 left lung; it is the pleural cavity, so it
    contains the vessels, intrapulmonary airways and every lesion voxel, effusion included.
    spacing: voxel size (z, y, x) in mm.
    """

    ct: np.ndarray
    lesions: np.ndarray
    lungs: np.ndarray
    spacing: tuple[float, float, float]

    def volume(self, name: str = "phantom"):
        """The CT as a :class:`~napari_covidseg.io.CTVolume` (on disk: voxel order x, y, z; axis codes L, P, S)."""
        from napari_covidseg.io.volume import display_volume

        return display_volume(self.ct, self.spacing, name, "HU", {"format": "phantom"})


def _grid(shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Broadcastable normalised coordinates: w in 0..1 (inferior -> superior), v and u in -1..1."""
    nz, ny, nx = shape
    w = np.linspace(0.0, 1.0, nz) if nz > 1 else np.array([0.4])
    v = np.linspace(-1.0, 1.0, ny) if ny > 1 else np.zeros(1)
    u = np.linspace(-1.0, 1.0, nx) if nx > 1 else np.zeros(1)
    return w[:, None, None], v[None, :, None], u[None, None, :]


def _to_voxel(points: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Normalised (zn, v, u) points, each in -1..1, to float voxel indices (z, y, x)."""
    half = (np.asarray(shape, dtype=float) - 1.0) / 2.0
    return (points + 1.0) * half


def _stamp(shape: tuple[int, int, int], centres: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Boolean mask of ellipsoids at voxel centres (N, 3) with normalised radii (N,), grouped by size."""
    out = np.zeros(shape, dtype=bool)
    if len(centres) == 0:
        return out
    half = np.maximum((np.asarray(shape, dtype=float) - 1.0) / 2.0, 0.5)
    rounded = np.round(np.asarray(radii) / 0.002) * 0.002
    for r in np.unique(rounded):
        rad = np.maximum(r * half, 0.5)  # radius in voxels per axis, at least the voxel itself
        ext = np.floor(rad).astype(int)
        oz, oy, ox = np.meshgrid(*(np.arange(-e, e + 1) for e in ext), indexing="ij")
        keep = (oz / rad[0]) ** 2 + (oy / rad[1]) ** 2 + (ox / rad[2]) ** 2 <= 1.0
        offsets = np.stack([oz[keep], oy[keep], ox[keep]], axis=1)
        base = np.rint(centres[rounded == r]).astype(int)
        idx = (base[:, None, :] + offsets[None, :, :]).reshape(-1, 3)
        idx = idx[np.all((idx >= 0) & (idx < np.asarray(shape)), axis=1)]
        out[idx[:, 0], idx[:, 1], idx[:, 2]] = True
    return out


def _sample_segment(a, b, ra: float, rb: float, step: float) -> tuple[np.ndarray, np.ndarray]:
    """Points every `step` along the normalised segment a -> b with linearly varying radius."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    n = max(int(np.ceil(np.linalg.norm(b - a) / step)), 1) + 1
    t = np.linspace(0.0, 1.0, n)[:, None]
    return a + t * (b - a), ra + t[:, 0] * (rb - ra)


def _vessel_tree(rng: np.random.Generator, side: float, step: float) -> tuple[np.ndarray, np.ndarray]:
    """Centre-line points (zn, v, u) and radii of a branching pulmonary vessel tree of one lung."""
    hilum = np.array([0.0, 0.0, 0.2 * side])
    trunks = [
        (0.6, -0.1, 0.5),
        (-0.7, 0.3, 0.5),
        (0.0, -0.5, 0.7),
        (-0.2, 0.6, 0.6),
        (0.2, 0.2, 0.9),
        (-0.8, -0.3, 0.4),
        (0.9, 0.3, 0.3),
    ]
    pts, rads = [], []
    stack = [(hilum, np.array([dz, dv, du * side]), 0.22, 0.017, 0) for dz, dv, du in trunks]
    while stack:
        start, direction, length, radius, depth = stack.pop()
        direction = direction / np.linalg.norm(direction)
        end = start + length * direction
        p, r = _sample_segment(start, end, radius, 0.85 * radius, step)
        pts.append(p)
        rads.append(r)
        if depth < 4:
            for _ in range(2):
                child = direction + rng.normal(0.0, 0.6, 3)
                stack.append((end, child, 0.75 * length, 0.72 * radius, depth + 1))
    return np.concatenate(pts), np.concatenate(rads)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma) -> np.ndarray:
    """Zero-mean, unit-SD, spatially smooth random field."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="nearest")
    return (field - field.mean()) / (field.std() + 1e-6)


def _paint_blob(
    rng, ct, lesions, allowed, centre, radius: float, label: int, hu_range, roughness: float = 0.35
) -> np.ndarray:
    """Paint an irregular smooth blob (normalised radius) of `label` inside `allowed`; return its mask."""
    shape = ct.shape
    rad = np.maximum(radius * np.maximum((np.asarray(shape) - 1.0) / 2.0, 0.5), 0.5)
    ext = np.ceil(1.4 * rad).astype(int)
    lo = np.maximum(np.asarray(centre) - ext, 0)
    hi = np.minimum(np.asarray(centre) + ext + 1, shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    sub = tuple(b - a for a, b in zip(lo, hi, strict=True))
    d2 = sum(
        ((np.arange(lo[k], hi[k]) - centre[k]) / rad[k]).reshape([-1 if j == k else 1 for j in range(3)]) ** 2
        for k in range(3)
    )
    sigma = np.maximum(rad / 2.0, 0.5)
    mask = (d2 + roughness * _smooth_noise(rng, sub, sigma) < 1.0) & allowed[box]
    low, high = hu_range
    t = np.clip(0.5 + 0.3 * _smooth_noise(rng, sub, sigma) + 0.25 * (0.5 - d2), 0.0, 1.0)
    ct[box][mask] = (low + (high - low) * t)[mask]
    lesions[box][mask] = label
    full = np.zeros(shape, dtype=bool)
    full[box] = mask
    return full


def _pick_centres(rng, allowed: np.ndarray, weight: np.ndarray, n: int) -> np.ndarray:
    """n voxel indices (z, y, x) drawn from `allowed`, with probability proportional to `weight`."""
    flat = np.flatnonzero(allowed)
    if flat.size == 0:
        return np.zeros((0, 3), dtype=int)
    p = np.broadcast_to(weight, allowed.shape).ravel()[flat]
    chosen = rng.choice(flat, size=n, p=p / p.sum())
    return np.stack(np.unravel_index(chosen, allowed.shape), axis=1)


def make_phantom(
    seed: int = 0,
    shape: tuple[int, int, int] = (48, 256, 256),
    spacing: tuple[float, float, float] = (5.0, 1.2, 1.2),
) -> Phantom:
    """Deterministic synthetic chest CT (HU, axes (z, y, x), spacing in mm) with lesion and lung labels.

    Contents: air outside (-1000 HU); an elliptic body of soft tissue with a subcutaneous fat layer;
    ribs, sternum and a posterior vertebra; a mediastinum with fat, heart and aorta; trachea and
    bronchi; two lungs narrowing towards the apex, above a diaphragm dome, with branching vessels.
    Lesions are painted in this order, each only inside the lungs (airways excluded) and below
    LESION_TOP_W: ground-glass blobs, consolidation (some inside a ground-glass halo), then a
    dependent (posterior) crescent of pleural effusion in the lower slices of one lung.
    Intensity ranges are LESION_HU_RANGES plus noise of NOISE_SD_HU truncated at NOISE_CLIP_HU.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape must be three positive ints (z, y, x), got {shape}")
    rng = np.random.default_rng(seed)
    w, v, u = _grid(shape)

    # Body: elliptic radius r and elliptic angle theta (pi/2 = posterior, -pi/2 = anterior).
    eu, ev = u / _BODY_AX, v / _BODY_AY
    r = np.sqrt(eu**2 + ev**2)
    theta = np.arctan2(ev, eu)
    ct = np.full(shape, HU_AIR, dtype=np.float32)
    ct[np.broadcast_to(r <= 1.0, shape)] = HU_SOFT
    ct[np.broadcast_to((r > _R_FAT) & (r <= _R_SKIN), shape)] = HU_FAT

    # Ribs: ring segments whose angular pattern turns with z (ribs slope); sternum anterior.
    phase = rng.uniform(0, 2 * np.pi)
    ring = (r > _R_RIB_IN) & (r < _R_RIB_OUT)
    pattern = np.cos(12.0 * theta + 2.5 * np.pi * w + phase) > 0.35
    ribs = ring & pattern & (np.abs(theta + np.pi / 2) > 0.3) & (np.abs(theta - np.pi / 2) > 0.3)
    ct[ribs] = HU_RIB
    sternum = (np.abs(u) < 0.06) & (np.abs(v + 0.85 * _BODY_AY) < 0.03) & (w > 0.3) & (w < 0.9)
    ct[sternum] = HU_RIB

    # Spine: vertebral body (cortex + cancellous), spinal canal, lamina and spinous process.
    vb = (u / 0.11) ** 2 + ((v - 0.30) / 0.11) ** 2
    canal = (u / 0.05) ** 2 + ((v - 0.47) / 0.05) ** 2
    lamina = ((u / 0.085) ** 2 + ((v - 0.47) / 0.085) ** 2 <= 1.0) & (v > 0.45)
    spinous = (u / 0.022) ** 2 + ((v - 0.56) / 0.05) ** 2 <= 1.0
    spine2 = (vb <= 1.0) | lamina | spinous
    ct[np.broadcast_to(spine2, shape)] = HU_VERTEBRA_CORTEX
    ct[np.broadcast_to(vb <= 0.7, shape)] = HU_VERTEBRA_CANCELLOUS
    ct[np.broadcast_to(canal <= 1.0, shape)] = 20.0
    paraspinal = (u / 0.17) ** 2 + ((v - 0.36) / 0.26) ** 2 <= 1.0

    # Mediastinum (fat) with heart (sitting on the diaphragm) and descending aorta.
    mediastinum = (np.abs(u) < 0.12) & (v < 0.25) & (r < _R_WALL) & ~paraspinal & (w > 0.12)
    ct[mediastinum] = HU_MEDIASTINAL_FAT
    heart_size = np.sqrt(np.clip(1.0 - ((w - 0.34) / 0.24) ** 2, 0.0, 1.0))
    heart_d = ((u - 0.08) / 0.27) ** 2 + ((v + 0.12) / 0.24) ** 2
    heart = heart_d < heart_size**2
    ct[heart] = HU_SOFT
    aorta = ((u - 0.1) ** 2 + (v - 0.15) ** 2 < 0.055**2) & (w > 0.1) & (w < 0.8)
    ct[aorta] = HU_SOFT

    # Lungs: ellipses narrowing to the apex, above a dome-shaped diaphragm, inside the thoracic wall.
    taper = np.sqrt(np.clip((0.96 - w) / 0.41, 0.0, 1.0))
    lungs = np.zeros(shape, dtype=np.uint8)
    for label, side, dome_top in ((RIGHT_LUNG, -1.0, 0.33), (LEFT_LUNG, 1.0, 0.29)):
        q2 = ((u - 0.4 * side) / 0.3) ** 2 + ((v - 0.05) / 0.5) ** 2
        dome = 0.04 - 0.03 * v + (dome_top - 0.04) * np.clip(1.0 - q2, 0.0, 1.0)
        cavity = (q2 < taper**2) & (w > dome) & (r < _R_WALL) & (side * u > 0.1)
        cavity &= ~mediastinum & ~paraspinal & ~(heart_d < (1.15 * heart_size) ** 2)
        lungs[cavity] = label
    in_lung = lungs > 0
    ct[in_lung] = HU_LUNG

    # Vessels: branching trees from each hilum, kept inside the lungs.
    step = 0.5 * min(2.0 / max(s - 1, 1) for s in shape)
    trees = [_vessel_tree(rng, side, step) for side in (-1.0, 1.0)]
    pts = np.concatenate([t[0] for t in trees])
    rads = np.concatenate([t[1] for t in trees])
    inside = np.all(np.abs(pts) <= 1.0, axis=1)
    vessels = _stamp(shape, _to_voxel(pts[inside], shape), rads[inside]) & in_lung
    ct[vessels] = HU_SOFT

    # Airways: trachea above the carina, main and lobar bronchi below it (lumen air, soft-tissue wall).
    w_carina = 0.62
    trachea_d2 = u**2 + (v + 0.08) ** 2
    above = w >= w_carina
    ct[above & (trachea_d2 < 0.072**2)] = HU_SOFT
    airway = above & (trachea_d2 < 0.055**2)
    carina = np.array([2 * w_carina - 1, -0.08, 0.0])
    lumen_pts, lumen_r = [], []
    for side in (-1.0, 1.0):
        mid = np.array([carina[0] - 0.24, -0.02, 0.28 * side])
        tip = np.array([carina[0] - 0.7, 0.08, 0.42 * side])
        for a, b, ra, rb in ((carina, mid, 0.04, 0.032), (mid, tip, 0.028, 0.018)):
            p, rr = _sample_segment(a, b, ra, rb, step)
            lumen_pts.append(p)
            lumen_r.append(rr)
    lp, lr = np.concatenate(lumen_pts), np.concatenate(lumen_r)
    ok = np.all(np.abs(lp) <= 1.0, axis=1)
    lp, lr = _to_voxel(lp[ok], shape), lr[ok]
    bronchial_wall = _stamp(shape, lp, lr + 0.014)
    ct[bronchial_wall] = HU_SOFT
    airway = airway | _stamp(shape, lp, lr)
    ct[airway] = HU_AIR
    parenchyma = in_lung & ~bronchial_wall & ~airway & np.broadcast_to(w <= LESION_TOP_W, shape)

    # Lesions: centres favour the posterior, peripheral and lower lungs (typical COVID-19 pattern).
    lesions = np.zeros(shape, dtype=np.uint8)
    weight = (1.0 + (v + 1.0)) * (0.5 + r) * (2.0 - w)
    n_ggo = int(rng.integers(7, 11))
    mid_slice = np.zeros(shape, dtype=bool)  # the first GGO (with consolidation) is on the middle slice,
    mid_slice[shape[0] // 2] = parenchyma[shape[0] // 2]  # the one a viewer opens at
    first = _pick_centres(rng, mid_slice if mid_slice.any() else parenchyma, weight, 1)
    ggo_centres = np.concatenate([first, _pick_centres(rng, parenchyma, weight, n_ggo - 1)])
    ggo_radii = rng.uniform(0.12, 0.24, len(ggo_centres))
    for c, rad in zip(ggo_centres, ggo_radii, strict=True):
        _paint_blob(rng, ct, lesions, parenchyma, c, rad, GGO, (-680.0, -320.0))
    n_cons = int(rng.integers(3, 6))
    free = _pick_centres(rng, parenchyma, weight, n_cons)
    for k in range(n_cons):
        if k % 2 == 0 and k // 2 < len(ggo_centres):  # inside a ground-glass halo
            c, rad = ggo_centres[k // 2], 0.5 * ggo_radii[k // 2]
        elif len(free):
            c, rad = free[k], rng.uniform(0.06, 0.11)
        else:
            continue
        _paint_blob(rng, ct, lesions, parenchyma, c, rad, CONSOLIDATION, (-80.0, 30.0), 0.25)

    # Pleural effusion: a posterior crescent along the chest wall of one lung, thickest at the base.
    side_label = RIGHT_LUNG if rng.random() < 0.5 else LEFT_LUNG
    depth = rng.uniform(0.13, 0.19) * np.clip((0.45 - w) / 0.33, 0.0, 1.0)
    crescent = r > _R_WALL - depth * np.clip(np.sin(theta), 0.0, 1.0) ** 2
    effusion = crescent & (lungs == side_label) & ~airway & ~bronchial_wall
    eff_lo, eff_hi = 5.0, 25.0
    ct[effusion] = eff_lo + (eff_hi - eff_lo) * rng.random()
    lesions[effusion] = EFFUSION

    # Noise inside the body (truncated so the HU ranges above hold within NOISE_CLIP_HU).
    body = np.broadcast_to(r <= 1.0, shape)
    noise = np.clip(rng.standard_normal(shape, dtype=np.float32) * NOISE_SD_HU, -NOISE_CLIP_HU, NOISE_CLIP_HU)
    ct[body] += noise[body]
    np.maximum(ct, -1024.0, out=ct)
    return Phantom(ct=ct, lesions=lesions, lungs=lungs, spacing=tuple(float(s) for s in spacing))


def write_sample(
    out_dir,
    seed: int = 0,
    shape: tuple[int, int, int] = (48, 256, 256),
    spacing: tuple[float, float, float] = (5.0, 1.2, 1.2),
) -> dict[str, Path]:
    """Write the phantom as NIfTI: CT (int16 HU), lesion labels and lung labels (uint8), one geometry.

    Returns {"ct", "lesions", "lungs"} -> path of covidseg_phantom_{ct,lesions,lungs}.nii.gz.
    """
    from napari_covidseg.io import save_array

    phantom = make_phantom(seed=seed, shape=shape, spacing=spacing)
    volume = phantom.volume()
    arrays = {
        "ct": np.rint(phantom.ct).astype(np.int16),
        "lesions": phantom.lesions.astype(np.uint8),
        "lungs": phantom.lungs.astype(np.uint8),
    }
    out = Path(out_dir)
    return {name: save_array(array, volume, out / f"covidseg_phantom_{name}.nii.gz") for name, array in arrays.items()}
