"""The dynsparse HTTP service: one checkpoint loaded once, every size served from it.

Example:
    >>> from service import Settings, create_app
    >>> app = create_app(Settings(checkpoint="runs/sst2"))
"""

from service.app import create_app
from service.settings import Settings, get_settings

__all__ = ["Settings", "create_app", "get_settings"]
