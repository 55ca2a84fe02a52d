"""pycertsrv: a certificate authority whose database is backed up online and restored consistently."""

from .errors import CertSrvError

__version__ = "0.1.0"
__all__ = ["CertSrvError", "__version__"]
