"""Data modules: each lists its samples; the shared base splits them and serves the loaders.

Transforms and tokenization come from the backbone's data_config, passed in by commands/fit.py.
"""

from tlcli.data.base import TransferDataModule
from tlcli.data.conll import CoNLLDataModule
from tlcli.data.csv import CSVDataModule
from tlcli.data.embedded import DigitsDataModule
from tlcli.data.hf import HFDataModule
from tlcli.data.imagefolder import ImageFolderDataModule
from tlcli.data.segfolder import SegFolderDataModule

__all__ = [
    "CoNLLDataModule",
    "CSVDataModule",
    "DigitsDataModule",
    "HFDataModule",
    "ImageFolderDataModule",
    "SegFolderDataModule",
    "TransferDataModule",
]
