"""Data: datalists for each on-disk format and the phantom generator."""

from .datalist import image_datalist, msd_datalist, split_cases

__all__ = ["image_datalist", "msd_datalist", "split_cases"]
