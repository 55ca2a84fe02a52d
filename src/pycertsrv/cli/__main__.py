"""``python -m pycertsrv.cli``: the ``certsrv`` command."""

from __future__ import annotations

from . import main

if __name__ == "__main__":
    main()
