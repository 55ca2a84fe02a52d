"""Continuous log archiving (issue 13): each closed generation shipped as it closes, in order.

Modules, one concept each: :mod:`.settings` (the ``[archive]`` section), :mod:`.destination`
(immutable files in a directory or through a command), :mod:`.shipper` (the service's shipping
thread, watermark, lag), :mod:`.verify` (``certsrv verify-archive``), :mod:`.restore` (the archive's
part of a restore plan), :mod:`.prune` (``certsrv archive prune``).

Layout of an archive: ``DEST/<identity>/<lineage>/edbXXXXXXXX.log`` (identity: the database's, as in
every log header; lineage: see :mod:`pycertsrv.store.archivemark`).
"""
