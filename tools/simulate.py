"""The simulated demo tissue: a Visium-like slice of layered human cortex.

Needs no data files: gene symbols (real human symbols) and layer profiles are embedded here.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from anndata import AnnData

LAYERS = ("Layer1", "Layer2", "Layer3", "Layer4", "Layer5", "Layer6", "WM")
# share of spots per layer, as in DLPFC slice 151673 (Maynard et al. 2021)
LAYER_FRACTIONS = (0.076, 0.070, 0.274, 0.060, 0.186, 0.192, 0.142)
DEMO_FILE = "tissuetalk_demo_cortex.h5ad"
SPACING_UM = 100.0  # Visium centre-to-centre distance

# layer markers: gene -> log2 fold change per layer (missing layers: 0)
MARKERS: dict[str, dict[str, float]] = {
    "RELN": {"Layer1": 3.0, "Layer2": 0.5},
    "AQP4": {"Layer1": 2.5, "WM": 1.0},
    "NDNF": {"Layer1": 2.5},
    "CXCL14": {"Layer1": 1.5, "Layer2": 1.5},
    "HPCAL1": {"Layer2": 2.0, "Layer3": 1.0},
    "LAMP5": {"Layer1": 1.0, "Layer2": 2.5, "Layer3": 1.5},
    "CUX2": {"Layer2": 2.0, "Layer3": 2.0, "Layer4": 1.0},
    "CARTPT": {"Layer2": 1.0, "Layer3": 2.0},
    "CALB1": {"Layer2": 1.5, "Layer3": 1.0},
    "ENC1": {"Layer2": 1.0, "Layer3": 1.5, "Layer4": 1.0, "Layer5": 0.5},
    "RORB": {"Layer3": 0.5, "Layer4": 3.0, "Layer5": 0.8},
    "PVALB": {"Layer3": 0.8, "Layer4": 2.0, "Layer5": 1.0},
    "SCN4B": {"Layer3": 0.5, "Layer4": 1.5, "Layer5": 1.0},
    "PCP4": {"Layer4": 0.5, "Layer5": 2.5, "Layer6": 1.0},
    "FEZF2": {"Layer5": 2.5, "Layer6": 1.0},
    "BCL11B": {"Layer5": 2.0, "Layer6": 1.0},
    "HTR2C": {"Layer5": 1.5, "Layer6": 0.5},
    "NR4A2": {"Layer5": 0.5, "Layer6": 2.5},
    "CCN2": {"Layer6": 3.0},
    "SYT6": {"Layer6": 2.0},
    "FOXP2": {"Layer5": 0.5, "Layer6": 2.0},
    "TLE4": {"Layer6": 2.0},
    "KRT17": {"Layer6": 2.0, "WM": 0.5},
    "MBP": {"Layer5": 0.5, "Layer6": 1.5, "WM": 3.5},
    "PLP1": {"Layer5": 0.5, "Layer6": 1.5, "WM": 3.5},
    "MOBP": {"Layer6": 1.0, "WM": 3.5},
    "MAG": {"Layer6": 0.8, "WM": 3.0},
    "MOG": {"Layer6": 0.8, "WM": 3.0},
    "CNP": {"Layer6": 1.0, "WM": 2.5},
    "CLDN11": {"Layer6": 0.8, "WM": 3.0},
    "OLIG2": {"Layer6": 0.5, "WM": 2.0},
    "CRYAB": {"Layer6": 0.5, "WM": 2.0},
    "APOD": {"Layer6": 0.5, "WM": 2.0},
    "GFAP": {"Layer1": 2.5, "Layer2": 0.5, "WM": 1.5},
}
# shared programmes: neuronal genes (grey matter) and astrocyte genes (pia and white matter)
NEURONAL = ("SNAP25", "SYT1", "NRGN", "STMN2", "GAP43", "NEFL", "NEFM", "NEFH", "CAMK2A",
            "ENO2", "VSNL1", "RBFOX3", "SLC17A7", "GAD1", "GAD2", "SST", "VIP", "CHGB", "SCG2",
            "NPTX1", "SYP", "SYN1", "VAMP2", "CPLX1", "CPLX2", "RAB3A", "STXBP1", "NSF", "KIF5A",
            "MAP1B", "MAP2", "MAPT", "THY1", "BASP1", "CALM1", "ATP1A3", "NCAM1", "GRIN1", "GRIA2",
            "GABRA1", "CCK", "NPY", "CNR1", "DLG4", "SV2A", "TUBB2A", "YWHAH", "SCG5")
NEURONAL_LFC = dict(zip(LAYERS, (-1.0, 1.0, 1.2, 1.2, 1.0, 0.8, -2.0)))
ASTRO = ("SLC1A3", "SLC1A2", "ALDOC", "S100B", "SPARCL1", "APOE", "CLU", "GJA1", "ATP1A2",
         "NDRG2", "MT3", "SLC4A4", "GPM6B")
ASTRO_LFC = dict(zip(LAYERS, (1.5, 0.3, 0.0, 0.0, 0.0, 0.2, 0.8)))
MITO = ("MT-CO1", "MT-CO2", "MT-CO3", "MT-ND1", "MT-ND2", "MT-ATP6", "MT-CYB")
BACKGROUND = tuple("""
RPL3 RPL4 RPL5 RPL6 RPL7 RPL7A RPL8 RPL9 RPL10 RPL10A RPL11 RPL12 RPL13 RPL13A RPL14 RPL15 RPL17
RPL18 RPL18A RPL19 RPL21 RPL22 RPL23 RPL23A RPL24 RPL26 RPL27 RPL27A RPL28 RPL29 RPL30 RPL31 RPL32
RPL34 RPL35 RPL35A RPL36 RPL37 RPL37A RPL38 RPL39 RPL41 RPLP0 RPLP1 RPLP2 RPS2 RPS3 RPS3A RPS4X
RPS5 RPS6 RPS7 RPS8 RPS9 RPS10 RPS11 RPS12 RPS13 RPS14 RPS15 RPS15A RPS16 RPS17 RPS18 RPS19 RPS20
RPS21 RPS23 RPS24 RPS25 RPS26 RPS27 RPS27A RPS28 RPS29 RPSA ACTB GAPDH B2M TUBA1A TUBA1B TUBB
TUBB4A EEF1A1 EEF1A2 EEF1B2 EEF1D EEF1G EEF2 TPT1 FTL FTH1 UBB UBC UBA52 HSP90AA1 HSP90AB1 HSPA8
HSPA5 PPIA PPIB CFL1 PFN1 MYL6 TMSB4X TMSB10 ACTG1 YWHAZ YWHAB YWHAE YWHAG YWHAQ CALM2 CALM3
ATP5F1A ATP5F1B ATP5MC3 ATP1A1 ATP1B1 ATP6V1B2 ATP6V0C NDUFA4 COX4I1 COX6C COX7C COX8A UQCRH CYCS
SOD1 PRDX1 PRDX2 GPX4 TXN PGK1 ENO1 ALDOA PKM LDHA LDHB TPI1 PGAM1 MDH1 MDH2 CS GLUL GNAS GNB1
GNAO1 H3-3A H3-3B HNRNPA1 HNRNPA2B1 HNRNPK HNRNPU SRSF3 SFPQ NPM1 NCL PABPC1 EIF1 EIF4A2 EIF4G2
SERF2 SEPTIN7 SEPTIN5 NACA BTF3 PTMA HMGB1 SET RACK1 CD63 CD81 CD9 CST3 SPARC VIM APP APLP2 PSAP
CTSB CTSD LAMP1 LAPTM4A TMBIM6 SQSTM1 CANX CALR P4HB PDIA3 SEC61B SSR4 RAB1A RAB7A ARF1 RHOA RAC1
CDC42 KIF5C SYN2 NRXN1 NLGN1 SHANK2 HOMER1 GRIN2B GRIA1 GABRB2 GABBR1 CACNA1A SCN1A SCN2A KCNC1
KCNMA1 CNTN1 L1CAM NRCAM CHGA PCSK1N NPTX2 TAC1 PENK CRH CORT CALB2 NTRK2 BDNF EGR1 FOS JUN JUNB
ARC NR4A1 IER2 DUSP1 KLF4 ZFP36 CEBPD MALAT1 NEAT1 MEG3 HBB HBA1 HBA2 CLDN5 FLT1 VWF PECAM1 ESAM
RGS5 ACTA2 MYL9 TAGLN COL1A1 COL1A2 COL3A1 COL4A1 COL4A2 LAMB1 FN1 IGFBP7 IFITM3 MGP PTGDS DCN
LUM CD74 HLA-A HLA-B HLA-C HLA-DRA TYROBP FCER1G AIF1 CSF1R C1QA C1QB C1QC CD14 TMEM119 P2RY12
CX3CR1 OLIG1 PDGFRA GPM6A PLLP TF QDPR SEPTIN4 ERMN OPALIN ENPP2 CNDP1 SCD FA2H UGT8 KLK6 CA2
MT2A MT1X SNCA SNCB UCHL1 PEBP1 NME1 NME2 HINT1 PARK7 DSTN TMSB15A STMN1 MARCKS MARCKSL1 GPRASP1
NDRG1 NDRG4 OLFM1 NELL2 CHN1 RTN1 RTN3 RTN4 SCAMP5 SNRPN SPOCK1 TSPAN7 TSPAN3 ITM2B ITM2C
BEX1 BEX2 TCEAL4 NNAT PCP4L1 CALY CRYM NEUROD6 SATB2 MEF2C TBR1 CUX1 POU3F2 DKK3 VGF BEX3
ATP2B1 ATP2B2 PPP3CA PPP3CB PPP1R1A PRKCB CAMK2B CAMK2N1 GRM5 KCNIP4 RGS4 LMO4 NRN1 ZWINT
""".split())


def _genes() -> list[str]:
    genes = list(dict.fromkeys((*MARKERS, *NEURONAL, *ASTRO, *MITO, *BACKGROUND)))
    return genes


def _hex_grid(n_rows: int, n_cols: int):
    """Visium geometry: array_col parity follows array_row; centres 100 µm apart."""
    rows = np.repeat(np.arange(n_rows), n_cols)
    cols = 2 * np.tile(np.arange(n_cols), n_rows) + rows % 2
    xy = np.column_stack([cols * SPACING_UM / 2, rows * SPACING_UM * np.sqrt(3) / 2])
    return rows, cols, xy


def _depth(xy: np.ndarray, rng) -> np.ndarray:
    """Distance below a curved pial surface (an arc with a gentle wave); < 0 is outside tissue."""
    w, h = np.ptp(xy[:, 0]), np.ptp(xy[:, 1])
    cx, radius = xy[:, 0].min() + rng.uniform(0.35, 0.65) * w, 1.2 * w
    cy = xy[:, 1].min() + 0.18 * h - radius  # the arc dips 18% of the height into the grid
    phase = rng.uniform(0, 2 * np.pi)
    wave = 0.02 * h * np.sin(2 * np.pi * xy[:, 0] / (0.7 * w) + phase)
    return np.hypot(xy[:, 0] - cx, xy[:, 1] - cy) - radius + wave


def _soft_membership(depth: np.ndarray, width: float) -> tuple[np.ndarray, np.ndarray]:
    """Hard labels from depth quantiles and soft weights with sigmoid layer boundaries."""
    bounds = np.quantile(depth, np.cumsum(LAYER_FRACTIONS)[:-1])
    labels = np.searchsorted(bounds, depth)
    sig = 1 / (1 + np.exp(-(depth[:, None] - bounds[None, :]) / width))  # P(deeper than b)
    upper = np.column_stack([np.ones(len(depth)), sig])
    lower = np.column_stack([sig, np.zeros(len(depth))])
    return labels, upper - lower


def _log_profiles(genes: list[str], rng) -> np.ndarray:
    """Per-layer mean log-abundance (genes x layers)."""
    g = len(genes)
    base = rng.normal(0.0, 1.2, g)
    hk = np.array([x.startswith(("RPL", "RPS", "MT-")) or x in ("ACTB", "GAPDH", "TMSB4X", "FTL",
                                                             "EEF1A1", "MALAT1") for x in genes])
    base[hk] += 2.5
    # background: small layer effects that drift smoothly with depth
    lfc = np.cumsum(rng.normal(0, 0.15, (g, len(LAYERS))), axis=1)
    lfc -= lfc.mean(axis=1, keepdims=True)
    for i, gene in enumerate(genes):
        if gene in MARKERS:
            lfc[i] = [MARKERS[gene].get(k, 0.0) for k in LAYERS]
            base[i] = rng.normal(-0.5, 0.5)
        elif gene in NEURONAL:
            lfc[i] = [NEURONAL_LFC[k] for k in LAYERS]
        elif gene in ASTRO:
            lfc[i] = [ASTRO_LFC[k] for k in LAYERS]
    return base[:, None] + lfc * np.log(2)


def simulate_tissue(seed: int = 0, n_rows: int = 46, n_cols: int = 50, n_genes: int | None = None,
                    mean_counts: float = 1500.0, boundary_um: float = 60.0,
                    mixing: float = 0.25, dispersion: float = 4.0) -> AnnData:
    """Simulate a Visium-like slice of layered cortex (Layer1-6, WM) with negative-binomial counts.

    The tissue edge (pia) is a curved arc; spots above it are left out, so a slice has somewhat
    fewer than ``n_rows * n_cols`` spots. Layers are curved bands with DLPFC-like relative thickness; expression blends across layer
    boundaries (sigmoid of width ``boundary_um``) and each spot mixes in a random share (``mixing``)
    of other layers. Counts: NB(mean, ``dispersion``) with a log-normal library size per spot.
    Writes obs['ground_truth'], obs['array_row'/'array_col'], obsm['spatial'] (µm),
    var['marker_for'] and uns['dataset_info']. ``n_genes`` caps the gene list (markers first).
    """
    import anndata as ad
    import pandas as pd
    from scipy import sparse

    if n_rows < 4 or n_cols < 4:
        raise ValueError("n_rows and n_cols must be at least 4")
    rng = np.random.default_rng(seed)
    genes = _genes()
    if n_genes is not None:
        genes = genes[:max(len(MARKERS), n_genes)]
    rows, cols, xy = _hex_grid(n_rows, n_cols)
    depth = _depth(xy, rng)
    inside = depth >= 0
    rows, cols, xy, depth = rows[inside], cols[inside], xy[inside], depth[inside]
    labels, soft = _soft_membership(depth, boundary_um)
    w = (1 - mixing) * soft + mixing * rng.dirichlet(np.full(len(LAYERS), 0.5), len(xy))
    mu_layer = np.exp(_log_profiles(genes, rng))  # genes x layers
    rel = w @ mu_layer.T
    rel /= rel.sum(axis=1, keepdims=True)
    lib_layer = np.array([0.8, 1.0, 1.05, 1.05, 1.0, 0.95, 0.7])[labels]
    lib = mean_counts * lib_layer * rng.lognormal(-0.08, 0.4, len(xy))
    mu = rel * lib[:, None]
    counts = rng.negative_binomial(dispersion, dispersion / (dispersion + mu))
    obs = pd.DataFrame({
        "in_tissue": 1, "array_row": rows, "array_col": cols,
        "ground_truth": pd.Categorical(np.array(LAYERS)[labels], categories=LAYERS),
    }, index=[f"spot_{r:03d}x{c:03d}" for r, c in zip(rows, cols)])
    marker_for = [max(MARKERS[g], key=MARKERS[g].get) if g in MARKERS else "" for g in genes]
    adata = ad.AnnData(X=sparse.csr_matrix(counts.astype(np.float32)), obs=obs,
                       var=pd.DataFrame({"marker_for": marker_for}, index=genes))
    adata.obsm["spatial"] = xy + 1000.0
    adata.uns["dataset_info"] = {
        "name": "tissuetalk demo cortex",
        "simulated": True,
        "description": (
            "Simulated 10x Visium-like slice of human cortex: hexagonal grid, curved layers "
            "Layer1-6 and WM with DLPFC-like thickness, real marker gene symbols, "
            "negative-binomial counts with smooth layer boundaries."
        ),
        "organism": "Homo sapiens (gene symbols)",
        "spatial": "obsm[spatial] in µm (offset 1000), spot centres 100 µm apart",
        "seed": int(seed),
    }
    return adata


def demo_path(workdir: str | Path, seed: int = 0) -> Path:
    """Path of the demo tissue .h5ad in ``workdir``, simulated and written atomically if absent."""
    workdir = Path(workdir)
    path = workdir / DEMO_FILE
    if path.exists():
        return path
    from tools.io import write_h5ad

    return write_h5ad(simulate_tissue(seed=seed), path)
