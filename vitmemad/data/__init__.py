"""Datasets and LightningDataModules (MVTec AD, BTAD, plain folders, and a download-free demo).

Every item is a dict: ``image`` float32 (3, S, S) in [-1, 1]; ``mask`` uint8 (H0, W0) in {0, 1}
at the ground truth's native resolution (zeros for normal images); ``label`` int; ``defect`` str
("good" for normal images); ``path`` str. Use `collate` with every DataLoader.
"""
from .base import AnomalyDataModule
from .dataset import AnomalyDataset, Sample, collate
from .btad import BTAD_PRODUCTS, BTADDataModule
from .demo import DEMO_CATEGORIES, DEMO_DEFECTS, DemoDataModule, generate_demo, write_demo_dataset
from .errors import DatasetError
from .folder import FolderDataModule
from .io import load_image, load_mask
from .mvtec import MVTEC_CATEGORIES, MVTEC_TEXTURES, MVTecDataModule
from .transforms import preprocess, to_display

__all__ = [
    "AnomalyDataModule", "AnomalyDataset", "Sample", "collate", "DatasetError",
    "MVTecDataModule", "BTADDataModule", "FolderDataModule", "DemoDataModule",
    "MVTEC_CATEGORIES", "MVTEC_TEXTURES", "BTAD_PRODUCTS", "DEMO_CATEGORIES", "DEMO_DEFECTS",
    "write_demo_dataset", "generate_demo", "load_image", "load_mask", "preprocess", "to_display",
]
