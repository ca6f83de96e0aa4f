"""Prefect blocks for IG1: credentials and model profiles.

Register them with ``prefect block register -m prefect_ig1.blocks``.
"""

from .credentials import API_KEY_ENV, BASE_URL_ENV, IG1Credentials
from .model import DEFAULT_MODEL, Prices, ResponsesModel

__all__ = ["API_KEY_ENV", "BASE_URL_ENV", "DEFAULT_MODEL", "IG1Credentials", "Prices",
           "ResponsesModel"]
