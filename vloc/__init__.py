"""vloc: visual localization against prebuilt maps."""

__version__ = "0.1.0"
