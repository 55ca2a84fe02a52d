"""``python -m pycertsrv.cli``: the ``certsrv`` command."""

from __future__ import annotations

from .root import main  # the package (imported first by python -m) has registered every verb

if __name__ == "__main__":
    main()
