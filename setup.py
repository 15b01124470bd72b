"""Compatibility shim: all metadata lives in pyproject.toml (PEP 621).

Kept so that tools which still call ``setup.py`` (older pbr-era OpenStack
packaging scripts, ``pip install -e`` with old pips) keep working.
"""

from setuptools import setup

setup()
