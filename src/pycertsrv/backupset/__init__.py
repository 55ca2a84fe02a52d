"""The backup set on disk: what ``certsrv backup`` writes and ``certsrv restore`` reads (spec §3, §5).

- :mod:`.manifest` -- ``certbkxp.dat``: the set's JSON manifest; :mod:`.setauth` -- its authenticator (MAC).
- :mod:`.writer` -- ``run_backup``: a client of a backup session writing a set; :mod:`.stream` -- its file I/O;
  :mod:`.chain` -- which full set an incremental continues; :mod:`.target` -- where a set may be written.
- :mod:`.verify` -- ``verify_backup``; :mod:`.setcheck` -- the restore's checks of the sets it is given.
- :mod:`.restore_plan` / :mod:`.restore_run` -- ``certsrv restore``: plan, then place and register
  (through :mod:`pycertsrv.backup.restore`); :mod:`.restore_cleanup` -- what a failed restore leaves.
- :mod:`.catalog` (+ :mod:`.catalog_model`, :mod:`.catalog_archive`, :mod:`.catalog_html`) -- the recovery
  window; :mod:`.retention` -- pruning whole chains.
- :mod:`.demo` -- the backup-and-restore story of ``certsrv demo``.

It talks to a backup session only through :mod:`pycertsrv.client` (or a ``LocalSession`` handed in).
"""
